"""task=label: label a pair dataset (a ShapesWorld oracle, or a JSONL label file) and report the
label statistics."""
from __future__ import annotations

import json
import os

import ml_collections
from absl import logging

from densedpo_jax.data import arrayrecord_io, labels_io, summary
from densedpo_jax.labeling.oracle import GlobalOracle, Labeler, SegmentOracle, label_dataset

LABELERS = {"segment": SegmentOracle, "global": GlobalOracle}


def make_labeler(spec: ml_collections.ConfigDict) -> Labeler:
  """`spec.labeler`: 'segment' (dense "human"; its global label is the segment majority vote)
  or 'global' (whole-video preference, the motion-biased "human")."""
  if spec.labeler not in LABELERS:
    raise ValueError(f"config.label.labeler={spec.labeler!r}; expected one of {sorted(LABELERS)}")
  return LABELERS[spec.labeler](tie_margin=spec.tie_margin, flip_prob=spec.flip_prob,
                                seed=spec.seed)


def _check_existing(spec: ml_collections.ConfigDict) -> None:
  """Existing labels are reused only when made by the same labeler settings and budget."""
  src = arrayrecord_io.ShardedSource(spec.out_dir, spec.out_name)
  want_n = spec.get("max_pairs") or len(arrayrecord_io.ShardedSource(spec.in_dir, spec.in_name))
  first = arrayrecord_io.decode_raw(src[0]) if len(src) else None
  want = json.loads(json.dumps(make_labeler(spec).params))
  if len(src) != want_n or first is None or first.labeler_params != want:
    raise ValueError(
        f"labels {spec.out_dir}/{spec.out_name} exist with other settings: {len(src)} pairs, "
        f"labeler params {first.labeler_params if first else None}; this run wants {want_n} "
        f"pairs and {want}. Delete them or choose another config.label.out_name.")


def label_pairs(spec: ml_collections.ConfigDict) -> dict:
  """Labels `spec.in_dir/in_name` (its first `spec.max_pairs` pairs; 0: all) into
  `spec.out_dir/out_name` (skipped when it exists). `labeler=jsonl` imports `spec.file` instead
  (every time: the file may have grown), reporting every bad or unknown line by number."""
  if spec.labeler == "jsonl":
    if not spec.file:
      raise ValueError("config.label.labeler='jsonl' needs config.label.file (a JSONL label file)")
    counts = labels_io.import_labels(spec.file, spec.in_dir, spec.in_name, spec.out_dir,
                                     spec.out_name, labeler=spec.source,
                                     labeler_params={"file": os.path.abspath(spec.file)})
    print(f"labels from {spec.file}: {counts['labeled']} pairs labeled, {counts['unchanged']} "
          "without a line")
    print(summary.format_summary(summary.summarize(spec.out_dir, spec.out_name)))
    return counts
  if os.path.exists(arrayrecord_io.sidecar_path(spec.out_dir, spec.out_name)):
    _check_existing(spec)
    logging.info("Labels %s/%s already exist: skipping labeling.", spec.out_dir, spec.out_name)
    stats_path = os.path.join(spec.out_dir, f"{spec.out_name}.label_stats.json")
    stats = {}
    if os.path.exists(stats_path):
      with open(stats_path) as f:
        stats = json.load(f)
  else:
    stats = label_dataset(spec.in_dir, spec.in_name, spec.out_dir, spec.out_name,
                          make_labeler(spec), max_pairs=spec.get("max_pairs") or None)
    with open(os.path.join(spec.out_dir, f"{spec.out_name}.label_stats.json"), "w") as f:
      json.dump(stats, f, indent=1, default=float)
  text = summary.format_summary(summary.summarize(spec.out_dir, spec.out_name))
  print(text)
  if stats:
    print(f"motion bias of the labels (share of non-tie pairs whose preferred clip is the slower "
          f"one; 0.5 = none): {stats['motion_bias']:.3f} over {stats['num_nontie_global']} pairs")
  return stats


def main(config: ml_collections.ConfigDict) -> dict:
  return label_pairs(config.label)
