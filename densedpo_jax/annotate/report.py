"""`python -m densedpo_jax.annotate report labels.jsonl`: who labeled what, how fast, how well.

  per annotator   pairs labeled, broken flags, median seconds a pair, agreement with gold pairs
                  (share of gold segments answered as known: ties on identical videos, the clean
                  member on a corrupted segment)
  between people  Cohen's kappa over segments labeled by two annotators, pooled and per segment
                  position (labels -1 / 0 / +1; the first two annotators of each pair)
"""
from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np

from densedpo_jax.data import jsonl


def read_lines(path: str) -> list[dict[str, Any]]:
  """The label lines of `path` and of its gold file (`path.gold.jsonl`), if any."""
  out = []
  for p in (path, path + ".gold.jsonl"):
    if os.path.exists(p):
      out += [obj for _, obj in jsonl.read_objects(p)]
  return out


def cohen_kappa(first: list[int], second: list[int]) -> float:
  """Cohen's kappa of two raters over the same items (categories -1, 0, +1); NaN if undefined."""
  a, b = np.asarray(first), np.asarray(second)
  if not len(a):
    return float("nan")
  observed = float((a == b).mean())
  expected = sum(float((a == k).mean() * (b == k).mean()) for k in (-1, 0, 1))
  return float("nan") if expected == 1 else (observed - expected) / (1 - expected)


def report(lines: list[dict[str, Any]]) -> dict[str, Any]:
  people: dict[str, dict[str, Any]] = collections.defaultdict(
      lambda: {"pairs": 0, "broken": 0, "seconds": [], "gold_hits": 0, "gold_segments": 0})
  by_pair = collections.defaultdict(list)
  for d in lines:
    p = people[d.get("annotator", "")]
    p["pairs"] += 1
    p["broken"] += bool(d.get("broken"))
    p["seconds"].append(float(d.get("seconds", 0)))
    seg = d.get("segment_labels")
    if d.get("gold") is not None and seg is not None:
      p["gold_segments"] += len(d["gold"])
      p["gold_hits"] += sum(int(x == y) for x, y in zip(seg, d["gold"]))
    elif seg is not None:
      by_pair[d["id"]].append(seg)
  first, second, positions = [], [], collections.defaultdict(lambda: ([], []))
  for segs in by_pair.values():
    if len(segs) >= 2 and len(segs[0]) == len(segs[1]):
      first += segs[0]
      second += segs[1]
      for k, (x, y) in enumerate(zip(segs[0], segs[1])):
        positions[k][0].append(x)
        positions[k][1].append(y)
  return {
      "annotators": {name: {"pairs": p["pairs"], "broken": p["broken"],
                            "median_seconds": float(np.median(p["seconds"])) if p["seconds"] else 0.0,
                            "gold_agreement": (p["gold_hits"] / p["gold_segments"]
                                               if p["gold_segments"] else float("nan"))}
                     for name, p in sorted(people.items())},
      "double_labeled_pairs": sum(len(s) >= 2 for s in by_pair.values()),
      "kappa": cohen_kappa(first, second),
      "kappa_by_segment": [cohen_kappa(*positions[k]) for k in sorted(positions)],
  }


def format_report(r: dict[str, Any]) -> str:
  pct = lambda x: "n/a" if x != x else f"{100 * x:.1f}%"
  lines = ["| annotator | pairs | broken | median s / pair | gold agreement |", "|---|---|---|---|---|"]
  for name, a in r["annotators"].items():
    lines.append(f"| {name} | {a['pairs']} | {a['broken']} | {a['median_seconds']:.1f} | "
                 f"{pct(a['gold_agreement'])} |")
  kappas = ", ".join("n/a" if k != k else f"{k:.2f}" for k in r["kappa_by_segment"])
  kappa = "n/a" if r["kappa"] != r["kappa"] else f"{r['kappa']:.2f}"
  lines.append(f"\nInter-annotator agreement over {r['double_labeled_pairs']} pairs labeled twice: "
               f"Cohen's kappa {kappa} (by segment: {kappas or 'n/a'})")
  return "\n".join(lines)
