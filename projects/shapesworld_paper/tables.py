"""The READMEs' result tables, rendered from the results' JSON files (never typed by hand).

    python -m projects.shapesworld_paper.tables --readme=README.md    # rewrite every table block
    python -m projects.shapesworld_paper.tables --main_job=workdirs/main_job \
        --out=results/main_job.json                                    # record the main job

A block in a README is `<!-- table:NAME -->`, the table, `<!-- /table -->`; `TABLES[NAME]`
renders it from this project's `results/*.json`, except `main_job`, which renders the
repository's `results/main_job.json` (the main job's record, read by the repository README).
tests/shapesworld_paper/test_tables.py checks that the READMEs' tables are what the files give.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Sequence

from absl import app, flags

from projects.shapesworld_paper import report, segment_speed, stats

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")  # This project's.
MAIN_JOB_RESULTS = os.path.join(ROOT, "results")  # The repository's: results/main_job.json.
BLOCK = re.compile(r"(<!-- table:(\w+) -->\n)(.*?)(<!-- /table -->)", re.S)
MAIN_JOB_COLUMNS = ("visual_quality", "temporal_consistency", "dynamic_degree", "fast_share",
                    "mean_speed", "text_alignment", "artifact_share", "off_palette", "background_noise")


def load(results_dir: str, name: str) -> dict:
  path = os.path.join(results_dir, name)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} is missing: run projects/shapesworld_paper/regenerate_results.sh")
  with open(path) as f:
    return json.load(f)


def _seeds(results: dict) -> list[str]:
  return [str(s) for s in results["config"]["eval_seeds"]]


def held_out(results_dir: str) -> dict[str, list[dict]]:
  """Every held-out run of the main, tuned and motion calls, once each (they share runs)."""
  runs = {}
  for name in ("shapesworld.json", "shapesworld_tuned.json", "shapesworld_motion.json"):
    if os.path.exists(os.path.join(results_dir, name)):
      for r in load(results_dir, name)["runs"]:
        runs[(r["arm"], r["seed"])] = r
  return report.runs_by_arm(list(runs.values()))


def _metrics_tables(d: str, name: str) -> str:
  r = load(d, name)
  return "\n\n".join(f"Evaluation seed {s}:\n\n" + report.metrics_table(r["arms"], r["runs"], s)
                     for s in _seeds(r))


def main_table(d: str) -> str:
  return _metrics_tables(d, "shapesworld.json")


def tuned_table(d: str) -> str:
  return _metrics_tables(d, "shapesworld_tuned.json")


def early_table(d: str) -> str:
  r = load(d, "shapesworld.json")
  return report.early_table(r["arms"], r["runs"], _seeds(r)[0])


def tune_table(d: str) -> str:
  """The sweep's grid: training-split visual quality of each arm at each (beta, step)."""
  r = load(d, "shapesworld_tune.json")
  seed, early = _seeds(r)[0], r["config"]["early_step"]
  grid, pretrained = {}, None
  for run in r["runs"]:
    name = run["arm"].split(":")[0]
    if not run["train"]:
      pretrained = run["eval"][seed]["visual_quality"]
      continue
    beta, last = run["settings"]["dpo.beta"], max(map(int, run["train"]))
    grid.setdefault(name, {})[(beta, last)] = run["eval"][seed]["visual_quality"]
    if run.get("eval_early"):
      grid[name][(beta, early)] = run["eval_early"][seed]["visual_quality"]
  cols = sorted({k for g in grid.values() for k in g})
  lines = ["| arm | " + " | ".join(f"beta {b:g}, step {t}" for b, t in cols) + " |",
           "|---" * (len(cols) + 1) + "|"]
  for name, g in grid.items():
    best = max(g, key=g.get)
    lines.append(f"| {r['arms'][name]} | " + " | ".join(
        "–" if k not in g else (f"**{g[k]:.3f}**" if k == best else f"{g[k]:.3f}") for k in cols) + " |")
  if pretrained is not None:
    lines.append("| Pretrained | " + " | ".join(f"{pretrained:.3f}" for _ in cols) + " |")
  return "\n".join(lines)


def claims_table(d: str) -> str:
  r = load(d, "shapesworld.json")
  return stats.claims_table(held_out(d), _seeds(r))


def verdicts_table(d: str) -> str:
  r = load(d, "shapesworld.json")
  return stats.claim_verdicts(held_out(d), _seeds(r))


def motion_table(d: str) -> str:
  r = load(d, "shapesworld_motion.json")
  return stats.difference_table(r["arms"], report.runs_by_arm(r["runs"]), "pretrained",
                                           ("fast_share", "mean_speed", "visual_quality",
                                            "artifact_share"), _seeds(r))


def objective_table(d: str) -> str:
  """The adoption bar for every DenseDPO variant of the objective call."""
  r = load(d, "shapesworld_objective.json")
  by_arm = report.runs_by_arm(r["runs"])
  return stats.adoption_table(r["arms"], by_arm, _seeds(r), stats.dense_variants(r["arms"]))


def objective_verdicts_table(d: str) -> str:
  """The adoption bar as one generated sentence per DenseDPO variant."""
  r = load(d, "shapesworld_objective.json")
  return stats.adoption_verdicts(r["arms"], report.runs_by_arm(r["runs"]), _seeds(r),
                                 stats.dense_variants(r["arms"]))


def objective_diff_table(d: str) -> str:
  """Every arm of the objective call minus the pretrained model, with the judge's haze measures."""
  r = load(d, "shapesworld_objective.json")
  return stats.difference_table(r["arms"], report.runs_by_arm(r["runs"]), "pretrained",
                                ("visual_quality", "fast_share", "mean_speed", "background_noise",
                                 "off_palette"), _seeds(r))


def segment_speed_table(d: str) -> str:
  return segment_speed.markdown(load(d, "segment_speed.json"))


def motion_segments_table(d: str) -> str:
  a = load(d, "motion_analysis.json")
  lines = ["| pair set (eta) | labels | non-tie segments | winner is the slower member | "
           "winner minus loser speed (px/frame) |", "|---|---|---|---|---|"]
  for s in a["label_sets"]:
    seg = s["segments"]
    eta = "-".join(f"{x:g}" for x in s["eta_range"]) if s.get("eta_range") else s["pairs"]
    wins = "" if s.get("keep_wins", "all") == "all" else f", {s['keep_wins']} wins only"
    lines.append(f"| {eta} | tie margin {s['tie_margin']:g}{wins}, {s['num_pairs']} pairs | "
                 f"{seg['count']} | "
                 f"{seg['winner_slower_share']:.3f} | {seg['mean_winner_minus_loser_speed']:+.4f} |")
  return "\n".join(lines)


def bias_table(d: str) -> str:
  return report.bias_table(load(d, "shapesworld.json")["label_bias"])


def appendix_b_table(d: str) -> str:
  return report.appendix_table(load(d, "shapesworld.json")["appendix_b"])


def main_job_table(d: str) -> str:
  r = load(d, "main_job.json")
  lines = ["| model | " + " | ".join(c.replace("_", " ") for c in MAIN_JOB_COLUMNS) + " |",
           "|---" * (len(MAIN_JOB_COLUMNS) + 1) + "|"]
  for name, ev in r["eval"]["results"].items():
    lines.append(f"| {name} | " + " | ".join(f"{ev[c]:.3f}" for c in MAIN_JOB_COLUMNS) + " |")
  return "\n".join(lines)


TABLES: dict[str, Callable[[str], str]] = {
    "main": main_table, "claims": claims_table, "verdicts": verdicts_table, "early": early_table, "tune": tune_table,
    "tuned": tuned_table, "motion": motion_table, "motion_segments": motion_segments_table,
    "bias": bias_table, "appendix_b": appendix_b_table, "main_job": main_job_table,
    "objective": objective_table, "objective_diff": objective_diff_table,
    "objective_verdicts": objective_verdicts_table,
    "segment_speed": segment_speed_table}


def fill(text: str, results_dir: str = RESULTS, main_job_dir: str = MAIN_JOB_RESULTS) -> str:
  """`text` with every table block re-rendered; an unknown block name is an error."""
  def one(m):
    if m.group(2) not in TABLES:
      raise ValueError(f"unknown table block {m.group(2)!r}; expected one of {sorted(TABLES)}")
    d = main_job_dir if m.group(2) == "main_job" else results_dir
    return m.group(1) + TABLES[m.group(2)](d) + "\n" + m.group(4)
  return BLOCK.sub(one, text)


def main_job_record(workdir: str) -> dict:
  """The main job's committed output: its evaluation and its label statistics."""
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    ev = json.load(f)
  stats_path = os.path.join(workdir, "pairs", "pairs_segment.label_stats.json")
  label_stats = json.load(open(stats_path)) if os.path.exists(stats_path) else None
  return {"workdir": workdir, "eval": ev, "label_stats": label_stats}


def main(argv: Sequence[str]) -> None:
  del argv
  if _MAIN_JOB.value:
    with open(_OUT.value, "w") as f:
      json.dump(main_job_record(_MAIN_JOB.value), f, indent=1)
    print(f"wrote {_OUT.value}")
  for readme in _README.value or ():
    with open(readme) as f:
      text = f.read()
    with open(readme, "w") as f:
      f.write(fill(text, _RESULTS.value))
    print(f"rewrote the table blocks of {readme}")


def define_flags() -> None:
  """Flags of the script (defined only when it runs, so that other entry points can share
  names such as --out in one process)."""
  global _README, _RESULTS, _MAIN_JOB, _OUT
  _README = flags.DEFINE_multi_string("readme", [], "rewrite the table blocks of this Markdown "
                                      "file (repeatable)")
  _RESULTS = flags.DEFINE_string("results", RESULTS, "folder of this project's results JSON files")
  _MAIN_JOB = flags.DEFINE_string("main_job", "", "main-job workdir to record into --out")
  _OUT = flags.DEFINE_string("out", "results/main_job.json", "where --main_job writes")


if __name__ == "__main__":
  define_flags()
  app.run(main)
