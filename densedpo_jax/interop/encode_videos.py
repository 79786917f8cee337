"""Encode videos and prompts into the project's latent records (a Wan VAE + umT5).

    python -m densedpo_jax.encode --weights=WAN_DIR --manifest=FILE.jsonl \\
        --out=DIR --name=NAME [--num_frames=81 --height=480 --width=832 --fps=16]

WAN_DIR is a Wan diffusers folder (its `vae/`, `text_encoder/`, `tokenizer/`): the Wan 2.1 VAE
(16 channels, 8x spatial: every Wan 2.1 model and Wan 2.2 A14B) or the Wan 2.2 VAE (48 channels,
16x spatial: TI2V-5B), read from `vae/config.json`. Manifest lines:

    {"id": "clip1", "prompt": "...", "video": "clip1.mp4"}                      -> VideoRecords
    {"id": "pair1", "prompt": "...", "video_a": "a.mp4", "video_b": "b.mp4",     -> PairRecords
     "segment_labels": [1, 0, -1], "global_label": 1, "frames_per_segment": 16}

`--condition=first_frame` stores each clip's image-to-video condition (its first frame's VAE
latent as the pipelines build it, and with an `image_encoder/` in WAN_DIR, Wan 2.1 I2V's, its CLIP
features); a pair's condition is its `video_a`'s first frame. Relative paths are relative to the
manifest. Every clip is resampled to `fps`, its first
`num_frames` frames (1 + 4k) kept, resized and centre-cropped to `height` x `width` (multiples of
16 for the Wan 2.1 VAE, 32 for the Wan 2.2 VAE: its 16x compression times the transformer's patch). `frames_per_segment` counts frames at `fps` (default: one second). Each distinct prompt is
embedded once; text is stored at the longest prompt's token count (the model zero-pads to 512, so
nothing is lost), latents and text in bfloat16.

Resumable: records are committed in parts (`NAME.parts/`), each written atomically, and the dataset
sidecar is written last; a rerun skips committed parts and refuses a changed manifest or settings.
A bad label stops the run before anything is encoded, naming the manifest line and field; a
missing, corrupt or too-short video does too, or with `--skip_bad` is skipped and counted (listed
in `NAME.skipped.jsonl`).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from typing import Any

import ml_dtypes
import numpy as np

from densedpo_jax import console
from densedpo_jax.data import jsonl, schema, segments
from densedpo_jax.data.parts import Parts
from densedpo_jax.interop import video_io, wan_encoders

LATENT_DTYPE = "bfloat16"


class ManifestError(console.JobError, ValueError):
  """A bad manifest line; names the file, the line number (1-based) and the field."""

  def __init__(self, path: str, line: int, field: str, message: str):
    self.path, self.line, self.field = path, line, field
    super().__init__(f"{path}, line {line}, field {field!r}: {message}")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One manifest line: a video (`videos == (path,)`) or a labeled pair (`(path_a, path_b)`)."""
  line: int
  id: str
  prompt: str
  videos: tuple[str, ...]
  segment_labels: tuple[int, ...] | None = None
  global_label: int | None = None
  frames_per_segment: int | None = None


def read_manifest(path: str) -> tuple[str, list[Entry]]:
  """`(kind, entries)`: kind 'video' or 'pair' (one kind a manifest); every line checked."""
  entries, kind, ids = [], None, {}
  base = os.path.dirname(os.path.abspath(path))
  for number, text in jsonl.read_lines(path):  # Undecodable bytes: JsonlError naming path:line.
    try:
      d = json.loads(text)
    except (ValueError, RecursionError) as e:
      raise ManifestError(path, number, "<json>", f"not a JSON object: {e}") from None
    if not isinstance(d, dict):
      raise ManifestError(path, number, "<json>", f"not a JSON object: {type(d).__name__}")
    line_kind = "pair" if "video_a" in d or "video_b" in d else "video"
    kind = kind or line_kind
    if line_kind != kind:
      raise ManifestError(path, number, "video_a" if kind == "video" else "video",
                          f"mixes {line_kind} and {kind} lines; one kind a manifest")
    fields = ("video",) if kind == "video" else ("video_a", "video_b")
    for field in ("id", "prompt") + fields:
      if not isinstance(d.get(field), str) or not d[field]:
        raise ManifestError(path, number, field, f"must be a non-empty string, got {d.get(field)!r}")
    if d["id"] in ids:
      raise ManifestError(path, number, "id", f"{d['id']!r} repeats line {ids[d['id']]}")
    ids[d["id"]] = number
    known = {"id", "prompt", *fields, "segment_labels", "global_label", "frames_per_segment"}
    if set(d) - known:
      raise ManifestError(path, number, sorted(set(d) - known)[0], f"unknown field; expected "
                          f"among {sorted(known)}")
    labels, glob, fps_seg = d.get("segment_labels"), d.get("global_label"), d.get("frames_per_segment")
    if labels is not None and (not isinstance(labels, list) or not labels or any(
        v not in (-1, 0, 1) or isinstance(v, bool) for v in labels)):
      raise ManifestError(path, number, "segment_labels", f"must be a non-empty list of -1, 0, "
                          f"1; got {labels!r}")
    if glob is not None and (glob not in (-1, 0, 1) or isinstance(glob, bool)):
      raise ManifestError(path, number, "global_label", f"must be -1, 0 or 1; got {glob!r}")
    if fps_seg is not None and (not isinstance(fps_seg, int) or fps_seg < 1):
      raise ManifestError(path, number, "frames_per_segment", f"must be an int >= 1; got {fps_seg!r}")
    entries.append(Entry(number, d["id"], d["prompt"],
                         tuple(os.path.join(base, d[f]) for f in fields),
                         tuple(labels) if labels else None, glob, fps_seg))
  if not entries:
    raise ManifestError(path, 1, "<file>", "no entries")
  return kind, entries


CONDITIONS = ("none", "first_frame")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What shapes a dataset: a resumed run must use the same."""
  num_frames: int = 81
  height: int = 480
  width: int = 832
  fps: float = 16.0
  records_per_part: int = 32
  condition: str = "none"  # 'first_frame': store the image-to-video condition of each clip.

  def check(self, temporal_factor: int, size_multiple: int = 16) -> None:
    if self.condition not in CONDITIONS:
      raise ValueError(f"--condition={self.condition}; expected one of {CONDITIONS}")
    if (self.num_frames - 1) % temporal_factor or self.num_frames < 1 + temporal_factor:
      raise ValueError(f"--num_frames={self.num_frames}: must be 1 + {temporal_factor} k, k >= 1")
    if self.height % size_multiple or self.width % size_multiple:
      raise ValueError(f"--height={self.height} --width={self.width}: must be multiples of "
                       f"{size_multiple} for this VAE")


def _load_clip(entry: Entry, index: int, settings: Settings, manifest: str) -> np.ndarray:
  field = "video" if len(entry.videos) == 1 else ("video_a", "video_b")[index]
  try:
    # One second more than needed: resampling takes the nearest source frame.
    frames, src_fps = video_io.read_video(entry.videos[index],
                                          seconds=(settings.num_frames - 1) / settings.fps + 1.0)
    return video_io.conform(frames, src_fps, fps=settings.fps, height=settings.height,
                            width=settings.width, num_frames=settings.num_frames,
                            path=entry.videos[index])
  except video_io.VideoError as e:
    raise ManifestError(manifest, entry.line, field, str(e)) from None


def _check_labels(entry: Entry, settings: Settings, manifest: str) -> int:
  fps_seg = entry.frames_per_segment or int(round(settings.fps))
  if entry.segment_labels is not None:
    try:
      segments.check_num_segments(settings.num_frames, fps_seg, len(entry.segment_labels))
    except ValueError as e:
      raise ManifestError(manifest, entry.line, "segment_labels", str(e)) from None
  return fps_seg


def _records(kind, entries, clips, latents, texts, settings, temporal_factor, conds=None):
  to_bf16 = lambda x: np.asarray(x, np.float32).astype(ml_dtypes.bfloat16)
  common = lambda e: dict(id=e.id, prompt=e.prompt, text_emb=to_bf16(texts[e.prompt][0]),
                          text_mask=texts[e.prompt][1], num_frames=settings.num_frames,
                          fps=settings.fps, temporal_factor=temporal_factor, causal=True,
                          latent_dtype=LATENT_DTYPE, **condition(k))
  condition = lambda k: {} if conds is None else dict(
      cond_latent=to_bf16(conds[0][k]), image_emb=None if conds[1] is None else to_bf16(conds[1][k]))
  out, k = [], 0
  for e in entries:
    if kind == "video":
      out.append(schema.VideoRecord(latent=to_bf16(latents[k]), metadata={"video": e.videos[0]},
                                    **common(e)))
    else:
      labels = None if e.segment_labels is None else np.asarray(e.segment_labels, np.int8)
      out.append(schema.PairRecord(
          latent_a=to_bf16(latents[k]), latent_b=to_bf16(latents[k + 1]),
          frames_per_segment=e.frames_per_segment or int(round(settings.fps)),
          segment_labels=labels, global_label=e.global_label,
          labeler="manifest" if labels is not None or e.global_label is not None else None,
          metadata={"video_a": e.videos[0], "video_b": e.videos[1]}, **common(e)))
    k += len(e.videos)
  return out


def encode_dataset(encoders, manifest: str, out: str, name: str, settings: Settings = Settings(),
                   batch_size: int = 4, skip_bad: bool = False, log=print) -> dict[str, Any]:
  """Encodes `manifest` into the dataset `out/name` with `encoders` (a `WanEncoders`); returns the
  sidecar. Resumes committed parts; see the module docstring."""
  spatial = getattr(encoders, "spatial_factor", 8)
  settings.check(encoders.temporal_factor, spatial * wan_encoders.PATCH)
  kind, entries = read_manifest(manifest)
  for e in entries:
    _check_labels(e, settings, manifest)
  plan = {"manifest_sha256": hashlib.sha256(open(manifest, "rb").read()).hexdigest(),
          "settings": dataclasses.asdict(settings), "kind": kind}
  parts = Parts(os.path.join(out, f"{name}.parts"), len(entries), settings.records_per_part,
                plan=plan)

  lengths = dict(zip(sorted({e.prompt for e in entries}),
                     encoders.token_lengths(sorted({e.prompt for e in entries}))))
  text_len = max(lengths.values())  # Every record's text has this length: batches stack.
  texts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  skipped_file = os.path.join(out, f"{name}.skipped.jsonl")
  todo = parts.todo()  # Parts committed by an earlier run are skipped.
  start, done = time.time(), 0
  for k in todo:
    chunk, clips, bad = [], [], []
    for e in (entries[i] for i in parts.items(k)):
      try:
        clips += [_load_clip(e, i, settings, manifest) for i in range(len(e.videos))]
        chunk.append(e)
      except ManifestError as err:
        if not skip_bad:
          raise
        bad.append({"line": e.line, "id": e.id, "field": err.field, "error": str(err)})
    new = sorted({e.prompt for e in chunk} - set(texts))
    if new:
      emb, _ = encoders.embed_prompts(new)
      for p, row in zip(new, emb):
        texts[p] = (row[:text_len], np.arange(text_len) < lengths[p])
    latents = [encoders.encode_videos(np.stack(clips[i:i + batch_size]))
               for i in range(0, len(clips), batch_size)]
    latents = np.concatenate(latents) if latents else np.zeros((0,))
    conds = None
    if settings.condition == "first_frame" and clips:  # A pair's is its video_a's first frame.
      encoded = [encoders.encode_conditions(np.stack(clips[i:i + batch_size]))
                for i in range(0, len(clips), batch_size)]
      conds = (np.concatenate([c for c, _ in encoded]),
               None if encoded[0][1] is None else np.concatenate([e for _, e in encoded]))
    records = _records(kind, chunk, clips, latents, texts, settings, encoders.temporal_factor,
                       conds)
    with parts.writer(k, metadata={"skipped": bad}) as writer:
      for rec in records:
        writer.write(rec)
    done += 1
    elapsed = time.time() - start
    log(f"encode: part {k + 1}/{parts.num_parts} ({len(records)} records, {len(bad)} skipped), "
        f"{elapsed / done:.1f} s/part, ETA {elapsed / done * (len(todo) - done):.0f} s")

  skipped = []
  for side in parts.sidecars():
    skipped += (side.get("metadata") or {}).get("skipped", [])
  jsonl.write_all(skipped_file, skipped)
  if len(skipped) == len(entries):
    raise ValueError(f"encode: every entry of {manifest} was skipped (see {skipped_file})")
  side = parts.merge(out, name, drop_empty=True, metadata={
      "model": wan_encoders.VAE_FAMILIES[getattr(encoders, "latent_channels", 16)],
      "manifest": os.path.abspath(manifest), "text_len": text_len,
      "skipped": len(skipped), **dataclasses.asdict(settings)})
  log(f"encode: {side['num_records']} {kind} records in {out}/{name} ({len(skipped)} skipped)")
  return side


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="auto", choices=("auto", "wan2.1", "wan2.2"),
                      help="the VAE family the folder must have (auto: whichever it has)")
  parser.add_argument("--weights", required=True, help="Wan diffusers folder (vae/, "
                      "text_encoder/, tokenizer/)")
  parser.add_argument("--manifest", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--name", required=True)
  for f in dataclasses.fields(Settings):
    parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
  parser.add_argument("--batch_size", type=int, default=4, help="videos per VAE call")
  parser.add_argument("--skip_bad", action="store_true",
                      help="skip and count bad videos instead of stopping")
  args = parser.parse_args(argv)
  settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
  try:  # Every input checked before the models load (minutes for umT5): one line each.
    wan_encoders.check_weights_folder(args.weights)
    vae = wan_encoders.vae_geometry(args.weights)
    if args.model not in ("auto", vae["family"]):
      raise ValueError(f"--model={args.model}, but {args.weights}/vae is the {vae['family']} VAE "
                       f"({vae['latent_channels']} channels)")
    settings.check(vae["temporal_factor"], vae["spatial_factor"] * wan_encoders.PATCH)
    if settings.condition != "none":
      wan_encoders.check_image_encoder(args.weights)
    _, entries = read_manifest(args.manifest)
    for e in entries:
      _check_labels(e, settings, args.manifest)
  except (ValueError, OSError) as e:
    raise SystemExit(f"error: {e}") from None
  encoders = wan_encoders.WanEncoders(args.weights, image=settings.condition != "none")
  encode_dataset(encoders, args.manifest, args.out, args.name, settings, args.batch_size,
                 args.skip_bad)


if __name__ == "__main__":
  main()
