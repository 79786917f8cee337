"""The ShapesWorld judge's calibration card: what it says of clean clips and of known artifacts.

    python -m densedpo_jax.shapesworld.calibration --clips=200

Prints, as Markdown:
  - on `--clips` ground-truth clips (train and held-out prompts alternately, seeds 0, 1, ...):
    mean visual quality and temporal consistency, the share read with full text alignment, the
    largest off-palette share and background noise, and the Spearman correlation of the judge's
    mean speed with the scene's true speed;
  - for each artifact kind of `artifacts.KINDS`, corrupting segment 1 of `--artifact_clips`
    clips: the segment's mean quality at severities 0, 0.25, 0.5, 0.75 and 1, and the largest
    change of any other segment's quality.
"""
from __future__ import annotations

import argparse

import numpy as np

from densedpo_jax.shapesworld import artifacts, judge, world

SEVERITIES = (0.0, 0.25, 0.5, 0.75, 1.0)


def _ranks(x: np.ndarray) -> np.ndarray:
  """Ranks of `x` (0-based), tied values sharing their mean rank (as Spearman's rho needs: a
  train and a held-out clip of one seed have the same speed)."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x), dtype=np.float64)
  for value in np.unique(x):
    tied = x == value
    ranks[tied] = ranks[tied].mean()
  return ranks


def ground_truth_card(num_clips: int) -> dict:
  """The judge on `num_clips` ground-truth clips (train / held-out alternately)."""
  if num_clips < 2:
    raise ValueError(f"--clips must be >= 2 (a rank correlation needs two clips), got {num_clips}")
  scores, speeds = [], []
  for k in range(num_clips):
    video, scene = world.generate(k // 2, split=("train", "heldout")[k % 2])
    scores.append(judge.judge_video(video, scene.prompt))
    speeds.append(scene.speed)
  measured = np.array([s.mean_speed for s in scores])
  return {"clips": num_clips,
          "visual_quality": float(np.mean([s.visual_quality for s in scores])),
          "temporal_consistency": float(np.mean([s.temporal_consistency for s in scores])),
          "text_alignment_1": int(sum(s.text_alignment == 1.0 for s in scores)),
          "max_off_palette": float(max(s.off_palette for s in scores)),
          "max_background_noise": float(max(s.background_noise for s in scores)),
          "speed_spearman": float(np.corrcoef(_ranks(measured), _ranks(np.array(speeds)))[0, 1])}


def artifact_card(num_clips: int) -> dict[str, dict]:
  """Per kind: segment 1's mean quality at each of SEVERITIES, and the largest other-segment move."""
  if num_clips < 1:
    raise ValueError(f"--artifact_clips must be >= 1, got {num_clips}")
  out = {}
  for kind in artifacts.KINDS:
    ladder, spill = np.zeros(len(SEVERITIES)), 0.0
    for seed in range(num_clips):
      video, scene = world.generate(seed)
      clean = judge.judge_video(video, scene.prompt).segment_quality
      for i, severity in enumerate(SEVERITIES):
        bad = artifacts.corrupt(video, artifacts.segment_frames(1, 4, len(video)), kind, severity, seed)
        quality = judge.judge_video(bad, scene.prompt).segment_quality
        ladder[i] += quality[1] / num_clips
        spill = max(spill, float(np.abs(np.delete(quality - clean, 1)).max()))
    out[kind] = {"segment_quality": ladder.tolist(), "other_segments_max_change": spill}
  return out


def card_markdown(truth: dict, kinds: dict[str, dict]) -> str:
  lines = [f"Ground truth ({truth['clips']} clips): visual quality {truth['visual_quality']:.3f}, "
           f"temporal consistency {truth['temporal_consistency']:.3f}, full text alignment on "
           f"{truth['text_alignment_1']}, off-palette share at most {truth['max_off_palette']:.3f}, "
           f"background noise at most {truth['max_background_noise']:.4f} shape areas, judge speed "
           f"vs. true speed Spearman {truth['speed_spearman']:.3f}.", "",
           "| artifact | " + " | ".join(f"severity {s:g}" for s in SEVERITIES) + " | other segments |",
           "|---" * (len(SEVERITIES) + 2) + "|"]
  for kind, row in kinds.items():
    lines.append(f"| {kind} | " + " | ".join(f"{q:.3f}" for q in row["segment_quality"])
                 + f" | {row['other_segments_max_change']:.3f} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--clips", type=int, default=200, help="ground-truth clips to judge")
  parser.add_argument("--artifact_clips", type=int, default=3,
                      help="clips corrupted at each artifact kind and severity")
  args = parser.parse_args(argv)
  print(card_markdown(ground_truth_card(args.clips), artifact_card(args.artifact_clips)))


if __name__ == "__main__":
  main()
