"""The Markdown report of task=experiment (`experiment.main`'s results dict -> text).

Tables: every arm's held-out metrics as mean +- std over training seeds (the paper's Tab. 1 and
Tab. 4 columns, plus label counts), the motion bias of whole-video labels before training,
the DPO training signals, the early-checkpoint comparison (drift) and Appendix B.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from projects.shapesworld_paper import stats

COLUMNS = (("visual_quality", "visual quality"), ("temporal_consistency", "temporal consistency"),
           ("dynamic_degree", "dynamic degree"), ("fast_share", "fast share"),
           ("mean_speed", "mean speed (px/frame)"), ("text_alignment", "text alignment"),
           ("artifact_share", "artifact share"), ("off_palette", "off-palette light"),
           ("background_noise", "background noise"))
DIFF_METRICS = ("visual_quality", "fast_share", "mean_speed", "artifact_share")
SIGNALS = (("implicit_acc", "implicit accuracy"),
           ("d_err_win", "winner error vs. reference"), ("d_err_lose", "loser error vs. reference"))


def mean_std(values: Sequence[float], fmt: str = ".3f") -> str:
  """`'0.861 ± 0.004'` (sample std over seeds); one value prints alone; none prints '–'."""
  v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
  if not v:
    return "–"
  if len(v) == 1:
    return f"{v[0]:{fmt}}"
  return f"{np.mean(v):{fmt}} ± {np.std(v, ddof=1):{fmt}}"


def runs_by_arm(runs: list[dict]) -> dict[str, list[dict]]:
  out: dict[str, list[dict]] = {}
  for r in runs:
    out.setdefault(r["arm"], []).append(r)
  return out


def last_signals(run: dict) -> dict[str, float]:
  """The DPO signals of the run's last logged window (empty for SFT and the base model)."""
  if not run.get("train"):
    return {}
  last = run["train"][max(run["train"], key=int)]
  if "implicit_acc" not in last:
    return {}
  return {"implicit_acc": last["implicit_acc"],
          "d_err_win": last["policy_err_win"] - last["ref_err_win"],
          "d_err_lose": last["policy_err_lose"] - last["ref_err_lose"]}


def metrics_table(arms: dict[str, str], runs: list[dict], eval_seed: str) -> str:
  by_arm = runs_by_arm(runs)
  # Results scored by the version-1 judge have no off-palette or background-noise column.
  columns = [c for c in COLUMNS if any(c[0] in r["eval"][eval_seed] for r in runs)]
  head = ["method", "seeds", "labeled pairs", "pairs trained on"] + [c[1] for c in columns]
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for name, title in arms.items():
    rs = by_arm.get(name, [])
    labels = rs[0]["labels"] if rs and rs[0]["labels"] else None
    if not rs:
      continue
    cells = [title, str(len(rs)) if rs[0]["train"] else "–",
             str(labels["labeled"]) if labels else "–", str(labels["kept"]) if labels else "–"]
    cells += [mean_std([r["eval"][eval_seed][key] for r in rs]) for key, _ in columns]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def signals_table(arms: dict[str, str], runs: list[dict]) -> str:
  by_arm = runs_by_arm(runs)
  lines = ["| method | " + " | ".join(s[1] for s in SIGNALS) + " |", "|---" * (len(SIGNALS) + 1) + "|"]
  for name, title in arms.items():
    sig = [last_signals(r) for r in by_arm.get(name, [])]
    if not any(sig):
      continue
    lines.append(f"| {title} | " + " | ".join(mean_std([s[k] for s in sig], ".2e" if k != "implicit_acc" else ".3f")
                                           for k, _ in SIGNALS) + " |")
  return "\n".join(lines)


def early_table(arms: dict[str, str], runs: list[dict], eval_seed: str) -> str:
  """The early checkpoint against the final one, mean ± std over every seed's run."""
  keys = ("visual_quality", "fast_share", "mean_speed", "text_alignment", "artifact_share")
  lines = ["| method | checkpoint | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
  by_arm = runs_by_arm(runs)
  for name, title in arms.items():
    rs = [r for r in by_arm.get(name, []) if r.get("eval_early")]
    if not rs:
      continue
    steps = sorted({max(map(int, r["train"])) for r in rs})
    for label, which in (("early", "eval_early"), (f"step {steps[-1]}", "eval")):
      lines.append(f"| {title} | {label} | " + " | ".join(
          mean_std([r[which][eval_seed][k] for r in rs]) for k in keys) + " |")
  return "\n".join(lines)


def bias_table(bias: dict[str, dict]) -> str:
  lines = ["| pairs | labeled | non-tie whole-video labels | preferred clip is the slower one |",
           "|---|---|---|---|"]
  for mode, b in bias.items():
    lines.append(f"| {mode} | {b['labeled']} | {b.get('num_nontie_global', '–')} | "
                 f"{mean_std([b.get('motion_bias')])} |")
  return "\n".join(lines)


def appendix_table(a: dict) -> str:
  lines = ["| blur sigma (px) | blur / patch side | mean delta inside the patch | "
           "mean delta outside (± s.e.) |", "|---|---|---|---|"]
  for s, f, i, o, se in zip(a["sigmas"], a["blur_fracs"], a["inside"], a["outside"], a["outside_se"]):
    lines.append(f"| {s:.2f} | {f:.4g} | {i:+.4f} | {o:+.5f} ± {se:.5f} |")
  return "\n".join(lines)


def render(results: dict, figure: str, tradeoff_figure: str = "") -> str:
  """The Markdown report; `figure` is the Appendix B figure's file name and `tradeoff_figure`
  the trade-off picture's (tradeoff.py; '' leaves its section out)."""
  c = results["config"]
  arms, runs = results["arms"], results["runs"]
  by_arm = runs_by_arm(runs)
  seeds = [str(s) for s in c["eval_seeds"]]
  codes = sorted({r.get("code", "unknown") for r in runs})
  parts = [
      "# DenseDPO on ShapesWorld: every arm from one base model",
      "Written by `python -m projects.shapesworld_paper.main "
      f"--config=projects/shapesworld_paper/configs/experiment.py` (code "
      f"{results.get('code', 'unknown')}; the runs were trained by {', '.join(codes)}; this call "
      f"{results['seconds'] / 60:.1f} min, the runs' own times add up to "
      f"{results.get('run_seconds', math.nan) / 60:.1f} min). N = {c['labeled_pairs']} labeled "
      f"pairs for DenseDPO, 3N for Vanilla/StructuralDPO; every trained arm, unless its name says "
      f"otherwise: {c['total_steps']} steps at batch {c['batch_size']}, LoRA rank "
      f"{c['lora_rank']}, lr {c['lr']:g}, beta {c['beta']:g}; guided eta in "
      f"{tuple(c['eta_range'])}, segment tie margin {c['tie_margin']:g}. Training seeds "
      f"{c['seeds']} (the pairs and labels are shared). Evaluation: up to "
      f"{c['eval_prompts_seeds'][0]} {c.get('eval_split', 'heldout')} prompts x "
      f"{c['eval_prompts_seeds'][1]} samples, the same noise for every model, under "
      f"{len(seeds)} independent noise sets (evaluation seeds {', '.join(seeds)}). Values are "
      "mean ± sample std over training seeds; intervals are 95% paired bootstrap intervals "
      "over prompts."]
  for s in seeds:
    parts.append(f"## Metrics, evaluation seed {s}\n\n" + metrics_table(arms, runs, s))
  parts.append(
      "*fast share*: share of clips faster than the middle of the world's speed range "
      "(0.85 px/frame; 0.5 on ground truth). *dynamic degree*: VBench-style share of moving "
      "clips. *pairs trained on*: labeled pairs the loss can use (non-tie whole-video label; for "
      "DenseDPO, more than 20% non-tie segments).")
  if "pretrained" in by_arm and len(by_arm) > 1:
    parts.append("## Against the pretrained model (paired, per prompt)\n\n" +
                 stats.difference_table(arms, by_arm, "pretrained", DIFF_METRICS, seeds))
  adoption = stats.adoption_table(arms, by_arm, seeds, stats.dense_variants(arms))
  if adoption.count("\n") > 1:
    parts.append("## Does a DenseDPO variant keep motion and quality?\n\n" + adoption + "\n\n"
                 "A variant meets the bar when, under every noise set, its fast share and mean "
                 "speed intervals against the pretrained model reach 0 or above and its visual "
                 "quality intervals against the pretrained model and VanillaDPO lie above 0.")
  if tradeoff_figure:
    parts.append("## The trade-off\n\nEach arm minus the pretrained model (the origin): fast "
                 "share across, visual quality up, with 95% paired bootstrap intervals.\n\n"
                 f"![quality against motion]({tradeoff_figure})")
  claims = stats.claims_table(by_arm, seeds)
  if claims.count("\n") > 1:
    parts.append("## The paper's claims\n\n" + claims + "\n\nA claim holds under one noise "
                 "set when its interval excludes 0 on the claimed side ('>=': the interval "
                 "reaches 0 or above); it is reproduced only when it holds under every set.")
  if results["label_bias"]:
    parts.append("## Motion bias of whole-video labels (before training)\n\n"
                 + bias_table(results["label_bias"]))
  signals = signals_table(arms, runs)
  if signals.count("\n") > 1:
    parts.append("## DPO training signals (last logged window)\n\n" + signals + "\n\n"
                 "Winner/loser error vs. reference: policy minus reference flow-matching error "
                 "on the batch (negative: more likely than under the base model).")
  if any(r.get("eval_early") for r in runs):
    parts.append(f"## Early checkpoint (step {c.get('early_step')}) vs. final, every seed\n\n"
                 + early_table(arms, runs, seeds[0]) + f"\n\nEvaluation seed {seeds[0]}.")
  if results.get("appendix_b"):
    parts.append(appendix_section(results["appendix_b"], figure))
  return "\n\n".join(parts) + "\n"


def appendix_section(a, figure: str) -> str:
  if not a:
    return "## Appendix B\n\nNot run (config.experiment.appendix_b.num_videos = 0)."
  return ("## Appendix B: loss difference of a blurred loser (base model)\n\n" + appendix_table(a) +
          f"\n\n{a['num_videos']} training videos x {a['draws']} (noise, t) draws, central patch "
          f"{a['patch']} (y0, y1, x0, x1). delta = loser minus winner flow-matching loss per "
          f"pixel, same noise and t.\n\n![Appendix B]({figure})")


def main(argv: Sequence[str]) -> None:
  """`python -m projects.shapesworld_paper.report results/X.json`: rewrites results/X.md from it."""
  import json
  import os
  for path in argv[1:]:
    with open(path) as f:
      results = json.load(f)
    stem = os.path.splitext(path)[0]
    tradeoff = stem + "_tradeoff.png"
    with open(stem + ".md", "w") as f:
      f.write(render(results, figure=os.path.basename(stem) + "_appendix_b.png",
                     tradeoff_figure=os.path.basename(tradeoff) if os.path.exists(tradeoff) else ""))
    print(f"wrote {stem}.md")


if __name__ == "__main__":
  import sys
  main(sys.argv)
