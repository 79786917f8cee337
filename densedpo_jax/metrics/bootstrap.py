"""Paired bootstrap intervals over prompts.

Models compared on the same prompts (and seeds) differ prompt by prompt: each prompt's mean over
its samples is one paired value, and resampling prompts says how much a difference depends on
which prompts were drawn.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def bootstrap_diff(a: np.ndarray, b: Optional[np.ndarray] = None, num: int = 2000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
  """Mean of `a - b` over prompts (`[P]` each, paired; `b` None: of `a`) and its percentile
  bootstrap interval at `level`, resampling prompts `num` times: `(mean, lo, hi)`."""
  d = np.asarray(a, np.float64) - (0.0 if b is None else np.asarray(b, np.float64))
  if d.ndim != 1 or len(d) < 2:
    raise ValueError(f"bootstrap_diff needs per-prompt values [P], P >= 2; got shape {d.shape}")
  idx = np.random.default_rng(seed).integers(0, len(d), size=(num, len(d)))
  boot = d[idx].mean(axis=1)
  tail = 100 * (1 - level) / 2
  return float(d.mean()), float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail))


def compare_to_base(per_prompt: dict[str, dict[str, list[float]]], num: int = 2000, seed: int = 0,
                    level: float = 0.95) -> dict[str, dict[str, dict[str, float]]]:
  """Each model against the first (the base), metric by metric: `{model: {metric: {'diff', 'lo',
  'hi'}}}` of `model - base` over prompts (`per_prompt[model][metric]`: `[P]` prompt means, the
  same prompts in the same order for every model). Metrics the base lacks, or with a prompt
  that has no value (None), are left out."""
  names = list(per_prompt)
  if not names:
    return {}
  base = per_prompt[names[0]]
  out = {}
  for name in names[1:]:
    rows = {}
    for metric, values in per_prompt[name].items():
      if metric not in base or any(v is None for v in (*values, *base[metric])):
        continue  # Not measured on the base, or not on every prompt.
      if len(values) != len(base[metric]):
        raise ValueError(f"compare_to_base: {name} has {len(values)} prompts for {metric!r}, the "
                         f"base {names[0]} {len(base[metric])}; models are compared on the same "
                         "prompts")
      diff, lo, hi = bootstrap_diff(values, base[metric], num=num, seed=seed, level=level)
      rows[metric] = {"diff": diff, "lo": lo, "hi": hi}
    out[name] = rows
  return out
