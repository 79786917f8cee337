"""task=label: label a pair dataset (a ShapesWorld oracle, or a JSONL label file) and report the
label statistics. On several processes, process 0 labels (once: one set of files, one set of VLM
calls) while the others wait for its statistics."""
from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
from absl import logging

from densedpo_jax import distributed, previews
from densedpo_jax.data import arrayrecord_io, labels_io, summary
from densedpo_jax.labeling.oracle import (GlobalOracle, Labeler, SegmentOracle, identity_decoder,
                                          label_dataset)
from densedpo_jax.labeling.vlm import VLMLabeler, VLMSettings

LABELERS = {"segment": SegmentOracle, "global": GlobalOracle}


def make_labeler(spec: ml_collections.ConfigDict) -> Labeler:
  """`spec.labeler`: 'segment' (dense "human"; its global label is the segment majority vote)
  or 'global' (whole-video preference, the motion-biased "human")."""
  if spec.labeler not in LABELERS:
    raise ValueError(f"config.label.labeler={spec.labeler!r}; expected one of {sorted(LABELERS)}")
  kwargs = {}
  if spec.get("keep_wins", "all") != "all":
    if spec.labeler != "segment":
      raise ValueError(f"config.label.keep_wins={spec.keep_wins!r} needs labeler 'segment', got "
                       f"{spec.labeler!r}")
    kwargs["keep_wins"] = spec.keep_wins
  return LABELERS[spec.labeler](tie_margin=spec.tie_margin, flip_prob=spec.flip_prob,
                                seed=spec.seed, **kwargs)


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
  """`_label_pairs` on process 0; every process gets its statistics."""
  return distributed.on_main(_label_pairs, spec)


def _stats_path(spec: ml_collections.ConfigDict):
  return distributed.path(spec.out_dir) / f"{spec.out_name}.label_stats.json"


def _label_pairs(spec: ml_collections.ConfigDict) -> dict:
  """Labels `spec.in_dir/in_name` (its first `spec.max_pairs` pairs; 0: all) into
  `spec.out_dir/out_name` (skipped when it exists). `labeler=jsonl` imports `spec.file` instead
  (every time: the file may have grown), reporting every bad or unknown line by number."""
  arrayrecord_io.check_local(spec.out_dir)  # Before any labeler call.
  if spec.labeler == "vlm":
    return label_with_vlm(spec)
  if spec.labeler == "jsonl":
    if not spec.file:
      raise ValueError("config.label.labeler='jsonl' needs config.label.file (a JSONL label file)")
    counts = labels_io.import_labels(spec.file, spec.in_dir, spec.in_name, spec.out_dir,
                                     spec.out_name, labeler=spec.source,
                                     labeler_params={"file": str(distributed.path(spec.file))})
    print(f"labels from {spec.file}: {counts['labeled']} pairs labeled, {counts['unchanged']} "
          "without a line")
    print(summary.format_summary(summary.summarize(spec.out_dir, spec.out_name)))
    return counts
  if distributed.path(arrayrecord_io.sidecar_path(spec.out_dir, spec.out_name)).exists():
    _check_existing(spec)
    logging.info("Labels %s/%s already exist: skipping labeling.", spec.out_dir, spec.out_name)
    stats = distributed.read_json(_stats_path(spec)) if _stats_path(spec).exists() else {}
  else:
    stats = label_dataset(spec.in_dir, spec.in_name, spec.out_dir, spec.out_name,
                          make_labeler(spec), max_pairs=spec.get("max_pairs") or None)
    distributed.write_json(_stats_path(spec), stats)
  text = summary.format_summary(summary.summarize(spec.out_dir, spec.out_name))
  print(text)
  if stats:
    print(f"motion bias of the labels (share of non-tie pairs whose preferred clip is the slower "
          f"one; 0.5 = none): {stats['motion_bias']:.3f} over {stats['num_nontie_global']} pairs")
  return stats


def videos_decoder(videos_dir: str):
  """Pair -> its decoded members `[T, H, W, 3]` in [-1, 1], read from the output of
  `python -m densedpo_jax.decode` (`<videos_dir>/<id>/a.mp4`, `b.mp4`)."""
  from densedpo_jax.interop import decode_records, video_io  # PyAV, only for real videos.

  def read(pair):
    out = []
    for member in ("a", "b"):
      path = os.path.join(videos_dir, decode_records.safe_name(pair.id), f"{member}.mp4")
      frames, _ = video_io.read_video(path)
      if len(frames) != pair.num_frames:
        raise ValueError(f"{path}: {len(frames)} frames; pair {pair.id!r} has {pair.num_frames}")
      out.append(frames.astype(np.float32) / 127.5 - 1.0)
    return tuple(out)
  return read


def label_with_vlm(spec: ml_collections.ConfigDict) -> dict:
  """labeler=vlm: a VLM labels `spec.in_dir/in_name` (or, with `spec.vlm.dry_run`, only counts
  the calls it would make). Reruns are cheap: answers come from the on-disk cache."""
  fields = {k: v for k, v in spec.vlm.to_dict().items() if k != "dry_run"}
  fields["cache"] = fields["cache"] or os.path.join(spec.out_dir, f"{spec.out_name}.vlm_cache.sqlite")
  labeler = VLMLabeler(VLMSettings(**fields))
  decoder = videos_decoder(spec.videos_dir) if spec.videos_dir else identity_decoder
  if spec.vlm.dry_run:
    src = arrayrecord_io.ShardedSource(spec.in_dir, spec.in_name)
    total = cached = 0
    for i in range(spec.get("max_pairs") or len(src)):
      rec = arrayrecord_io.decode_raw(src[i])
      n, hit = labeler.count_calls(rec, *decoder(rec))
      total, cached = total + n, cached + hit
    print(f"vlm dry run: {total} questions, {cached} already cached: {total - cached} calls to "
          f"{labeler.settings.model} at {labeler.settings.base_url} (budget: max_requests = "
          f"{labeler.settings.max_requests or 'none'})")
    return {"questions": total, "cached": cached, "calls": total - cached}
  stats = label_dataset(spec.in_dir, spec.in_name, spec.out_dir, spec.out_name, labeler,
                        decoder=decoder, max_pairs=spec.get("max_pairs") or None)
  stats["vlm"] = dict(labeler.stats)
  distributed.write_json(_stats_path(spec), stats)
  print(summary.format_summary(summary.summarize(spec.out_dir, spec.out_name)))
  s = labeler.stats
  print(f"vlm: {s['requests']} questions, {s['calls']} HTTP attempts, {s['cache_hits']} cache hits, "
        f"{s['failures']} failures (recorded as ties), {s['disagreements']} swap disagreements "
        f"(ties), {s['tie_segments']} of {s['segments']} segments tied, {s['tokens']} tokens")
  return stats


def write_previews(spec: ml_collections.ConfigDict, decoder, count: int) -> list[str]:
  """GIFs of the first `count` labeled pairs (a | b, a strip under each member coloured by its
  segment result: green wins, red loses, grey tie) in `<out_dir>/<out_name>_previews/`."""
  src = arrayrecord_io.ShardedSource(spec.out_dir, spec.out_name)
  out_dir = os.path.join(spec.out_dir, f"{spec.out_name}_previews")
  files = []
  for i in range(min(count, len(src))):
    rec = arrayrecord_io.decode_raw(src[i])
    caption = (f"{rec.prompt} | {rec.labeler}: segments {rec.segment_labels.tolist()}, "
               f"global {rec.global_label}")
    frames = previews.pair_preview(*decoder(rec), rec.segment_labels, rec.frames_per_segment,
                                   caption=caption)
    files.append(os.path.join(out_dir, f"{i:04d}.gif"))
    previews.save_video(files[-1], frames, rec.fps)
  if files:
    logging.info("label previews: %d GIFs in %s", len(files), out_dir)
  return files


def main(config: ml_collections.ConfigDict) -> dict:
  spec = config.label
  stats = label_pairs(spec)
  if not distributed.is_main():
    return stats
  if spec.get("num_previews", 0) and not (spec.labeler == "vlm" and spec.vlm.dry_run):
    sig = arrayrecord_io.read_sidecar(spec.out_dir, spec.out_name)["signature"]
    if spec.get("videos_dir"):
      write_previews(spec, videos_decoder(spec.videos_dir), spec.num_previews)
    elif sig["temporal_factor"] == 1 and sig["latent_shape"][-1] == 3:  # Pixels (ShapesWorld).
      write_previews(spec, identity_decoder, spec.num_previews)
    else:
      logging.info("label previews skipped: latent records; set config.label.videos_dir to "
                   "their decoded videos (python -m densedpo_jax.decode)")
  return stats
