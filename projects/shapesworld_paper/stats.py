"""Paired bootstrap intervals over prompts and the paper's claims, for experiment reports.

Every model of an experiment is sampled on the same prompts with the same noise, so a
difference between two arms is taken prompt by prompt (each prompt's mean over its samples and
the arm's training seeds) and resampled over prompts: the interval says how much the result
depends on which prompts were drawn. A claim holds under one set of evaluation noise when its
interval excludes zero in the claimed direction; it is reproduced only when it holds under every
set (`config.experiment.eval_seeds`).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from densedpo_jax.metrics.bootstrap import bootstrap_diff


def prompt_means(runs: Sequence[dict], metric: str, eval_seed: str, which: str = "eval") -> np.ndarray:
  """`[P]`: each prompt's `metric` averaged over the runs (training seeds) of one arm."""
  rows = [np.asarray(r[which][eval_seed]["per_prompt"][metric], np.float64) for r in runs]
  return np.mean(rows, axis=0)


@dataclasses.dataclass(frozen=True)
class Claim:
  """`metric(arm) - metric(other)` is `relation` 0: '>' / '<' (the interval excludes 0 on
  that side) or '>=' (the interval reaches 0 or above: no significant loss)."""
  text: str
  arm: str
  other: str
  metric: str
  relation: str

  def holds(self, lo: float, hi: float) -> bool:
    return {">": lo > 0, "<": hi < 0, ">=": hi >= 0}[self.relation]


CLAIMS = (
    Claim("VanillaDPO slows clips down", "vanilla", "pretrained", "fast_share", "<"),
    Claim("StructuralDPO keeps more motion than VanillaDPO", "structural", "vanilla", "fast_share", ">"),
    Claim("DenseDPO improves visual quality over the base model", "dense", "pretrained", "visual_quality", ">"),
    Claim("DenseDPO (N labels) beats VanillaDPO (3N) on visual quality", "dense", "vanilla", "visual_quality", ">"),
    Claim("DenseDPO keeps more motion than VanillaDPO", "dense", "vanilla", "fast_share", ">"),
    Claim("DenseDPO keeps the base model's motion", "dense", "pretrained", "fast_share", ">="),
    Claim("40% flipped labels lose DenseDPO's quality gain", "dense", "dense_flip40", "visual_quality", ">"),
    Claim("Tuned VanillaDPO slows clips down", "vanilla:beta=2500", "pretrained", "fast_share", "<"),
    Claim("Tuned StructuralDPO keeps more motion than tuned VanillaDPO",
          "structural:beta=2500:steps=50", "vanilla:beta=2500", "fast_share", ">"),
    Claim("DenseDPO (N labels) is not worse than tuned VanillaDPO (3N) on visual quality",
          "dense", "vanilla:beta=2500", "visual_quality", ">="),
    Claim("DenseDPO keeps more motion than tuned VanillaDPO", "dense", "vanilla:beta=2500",
          "fast_share", ">"),
)


def fmt_ci(mean: float, lo: float, hi: float, fmt: str = "+.3f") -> str:
  return f"{mean:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def claim_results(by_arm: dict[str, list[dict]], eval_seeds: Sequence[str]) -> list[tuple]:
  """(claim, [(mean, lo, hi, met)] per evaluation seed, reproduced) for every claim whose arms
  ran; reproduced: met under every seed."""
  out = []
  for c in CLAIMS:
    if c.arm not in by_arm or c.other not in by_arm:
      continue
    per_seed = []
    for s in eval_seeds:
      mean, lo, hi = bootstrap_diff(prompt_means(by_arm[c.arm], c.metric, s),
                                    prompt_means(by_arm[c.other], c.metric, s))
      per_seed.append((mean, lo, hi, c.holds(lo, hi)))
    out.append((c, per_seed, all(p[3] for p in per_seed)))
  return out


def claims_table(by_arm: dict[str, list[dict]], eval_seeds: Sequence[str]) -> str:
  """One row per claim whose arms ran: the difference and its interval under each evaluation
  seed, and whether it is reproduced (holds under all of them)."""
  head = ["claim", "difference"] + [f"eval seed {s}: mean [95% CI]" for s in eval_seeds] + ["reproduced"]
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for c, per_seed, reproduced in claim_results(by_arm, eval_seeds):
    cells = [fmt_ci(mean, lo, hi) + (" holds" if met else " fails")
             for mean, lo, hi, met in per_seed]
    lines.append(f"| {c.text} | {c.metric}: {c.arm} {c.relation} {c.other} | " + " | ".join(cells)
                 + f" | {'yes' if reproduced else 'no'} |")
  return "\n".join(lines)


def claim_verdicts(by_arm: dict[str, list[dict]], eval_seeds: Sequence[str]) -> str:
  """The claims table as sentences, one a claim: what a README says about each claim."""
  lines = []
  for i, (c, per_seed, reproduced) in enumerate(claim_results(by_arm, eval_seeds), 1):
    if reproduced:
      verdict = "reproduced"
    elif any(p[3] for p in per_seed):
      verdict = "not reproduced (" + ", ".join(
          f"{'holds' if p[3] else 'fails'} under eval seed {s}"
          for s, p in zip(eval_seeds, per_seed)) + ")"
    else:
      verdict = "not reproduced (fails under every eval seed)"
    means = " / ".join(f"{p[0]:+.3f}" for p in per_seed)
    lines.append(f"{i}. **{c.text}: {verdict}.** {c.metric}, {c.arm} minus {c.other}: {means}.")
  return "\n".join(lines)


def difference_table(arms: dict[str, str], by_arm: dict[str, list[dict]], reference: str,
                     metrics: Sequence[str], eval_seeds: Sequence[str]) -> str:
  """Each arm minus `reference`, per metric and evaluation seed: mean [95% CI] over prompts."""
  head = ["method", "eval seed"] + list(metrics)
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for key, title in arms.items():
    if key == reference or key not in by_arm:
      continue
    for s in eval_seeds:
      cells = [fmt_ci(*bootstrap_diff(prompt_means(by_arm[key], m, s),
                                      prompt_means(by_arm[reference], m, s))) for m in metrics]
      lines.append(f"| {title} | {s} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


# What a default objective must do (the motion experiment's bar): keep the base model's motion
# (fast share and mean speed intervals against it reach 0 or above) while its visual quality
# still beats the base model and VanillaDPO (intervals above 0), under every evaluation seed.
ADOPTION = (("fast_share", "pretrained", ">="), ("mean_speed", "pretrained", ">="),
            ("visual_quality", "pretrained", ">"), ("visual_quality", "vanilla", ">"))


def dense_variants(arms) -> list[str]:
  """The DenseDPO arms of a call (`dense` and its `dense:key=value` variants), in its order."""
  return [a for a in arms if a == "dense" or a.startswith("dense:")]


def adoption_results(by_arm: dict[str, list[dict]], eval_seeds: Sequence[str],
                     candidates: Sequence[str]) -> list[tuple]:
  """(arm, {(metric, other): [(mean, lo, hi, met)] per seed}, meets the bar under every seed)
  for every candidate that ran, when the pretrained and vanilla arms ran too."""
  if "pretrained" not in by_arm or "vanilla" not in by_arm:
    return []
  out = []
  for arm in candidates:
    if arm not in by_arm:
      continue
    cells, ok = {}, True
    for metric, other, relation in ADOPTION:
      check = Claim("", arm, other, metric, relation)
      per_seed = []
      for s in eval_seeds:
        mean, lo, hi = bootstrap_diff(prompt_means(by_arm[arm], metric, s),
                                      prompt_means(by_arm[other], metric, s))
        per_seed.append((mean, lo, hi, check.holds(lo, hi)))
        ok &= per_seed[-1][3]
      cells[(metric, other)] = per_seed
    out.append((arm, cells, ok))
  return out


def adoption_table(arms: dict[str, str], by_arm: dict[str, list[dict]], eval_seeds: Sequence[str],
                   candidates: Sequence[str]) -> str:
  """One row per candidate and evaluation seed: each condition of ADOPTION as mean [95% CI]
  with holds / fails, and whether the candidate meets every condition under every seed."""
  head = (["method", "eval seed"] + [f"{m}: minus {o} ({r} 0)" for m, o, r in ADOPTION]
          + ["meets the bar"])
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for arm, cells, ok in adoption_results(by_arm, eval_seeds, candidates):
    for i, s in enumerate(eval_seeds):
      row = [fmt_ci(*cells[(m, o)][i][:3]) + (" holds" if cells[(m, o)][i][3] else " fails")
             for m, o, _ in ADOPTION]
      lines.append(f"| {arms.get(arm, arm)} | {s} | " + " | ".join(row)
                   + f" | {('yes' if ok else 'no') if i == 0 else ''} |")
  return "\n".join(lines)


def adoption_verdicts(arms: dict[str, str], by_arm: dict[str, list[dict]],
                      eval_seeds: Sequence[str], candidates: Sequence[str]) -> str:
  """The adoption table as sentences, one a candidate: which conditions fail, and the means."""
  lines = []
  for i, (arm, cells, ok) in enumerate(adoption_results(by_arm, eval_seeds, candidates), 1):
    failed = [f"{m} vs. {o}" for m, o, _ in ADOPTION if not all(p[3] for p in cells[(m, o)])]
    verdict = "meets the bar" if ok else "does not meet the bar (" + ", ".join(failed) + ")"
    means = "; ".join(f"{m} vs. {o} " + " / ".join(f"{p[0]:+.3f}" for p in cells[(m, o)])
                      for m, o, _ in ADOPTION)
    lines.append(f"{i}. **{arms.get(arm, arm)}: {verdict}.** {means}.")
  return "\n".join(lines)
