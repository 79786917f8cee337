"""Decode latent records to video files: for people (labeling), VLMs and external evaluators.

    python -m densedpo_jax.decode --records=DIR/NAME --out=OUT [--decoder=auto|pixels|wan]
        [--weights=WAN_DIR] [--format=mp4|gif] [--scale=1]

Output (what the VLM labeler and the annotation page read):

    OUT/<id>.mp4                       a VideoRecord's clip
    OUT/<id>/a.mp4, b.mp4, pair.mp4    a PairRecord's members and both side by side (a left)
    OUT/index.jsonl                    one line a record: id, kind, prompt, files (relative to
                                       OUT), num_frames, fps, frames_per_segment, labels if any

Decoders: `pixels` for records whose latent is the video itself (ShapesWorld: identity
autoencoder, RGB in [-1, 1]); `wan` runs the Wan VAE (2.1 or 2.2) of `--weights` (PyTorch, GPU
when there is one). `auto` picks `pixels` for 3-channel records with temporal factor 1, else `wan`. Files that
exist are kept, so an interrupted run resumes; the index is rewritten at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
import zlib
from typing import Callable

import numpy as np

from densedpo_jax.data import arrayrecord_io, schema
from densedpo_jax.interop import video_io

Decoder = Callable[[np.ndarray], np.ndarray]  # latents [B, T', h, w, C] -> uint8 [B, F, H, W, 3]
DECODERS = ("auto", "pixels", "wan")


def make_decoder(kind: str, weights: str = "") -> Decoder:
  """A latent -> uint8 RGB video function (`kind` 'pixels' or 'wan')."""
  if kind == "pixels":
    return lambda latents: video_io.to_uint8(np.asarray(latents, np.float32))
  if kind == "wan":
    if not weights:
      raise ValueError("the 'wan' decoder needs the Wan diffusers folder (--weights / "
                       "config.decoder.weights)")
    from densedpo_jax.interop.wan_encoders import WanEncoders
    return WanEncoders(weights, text=False).decode_latents
  raise ValueError(f"decoder {kind!r}; expected one of {DECODERS}")


def auto_kind(side: dict) -> str:
  """'pixels' for identity-autoencoder datasets (ShapesWorld), else 'wan'."""
  sig = side["signature"]
  shape = sig.get("latent_shape") or []
  return "pixels" if sig.get("temporal_factor") == 1 and shape and shape[-1] == 3 else "wan"


def safe_name(record_id: str) -> str:
  """A file name for an id, unique per id: odd characters become '_' and, when any did, a hash
  of the id is appended (so `a/b` and `a_b` never share files)."""
  name = re.sub(r"[^A-Za-z0-9._=-]", "_", record_id).lstrip(".")
  if name == record_id:
    return name
  return f"{name or '_'}-{zlib.crc32(record_id.encode('utf-8')):08x}"


def _scaled(video: np.ndarray, scale: int) -> np.ndarray:
  return video if scale == 1 else video.repeat(scale, axis=1).repeat(scale, axis=2)


def decode_records(records, out: str, decoder: Decoder, fmt: str = "mp4", scale: int = 1,
                   log=print) -> list[dict]:
  """Writes the files of each record (an iterable of VideoRecord / PairRecord); returns the
  index entries. Records whose files all exist are skipped (resume)."""
  os.makedirs(out, exist_ok=True)
  index, start = [], time.time()
  for n, rec in enumerate(records, start=1):
    stem = safe_name(rec.id)
    entry = {"id": rec.id, "kind": rec.KIND, "prompt": rec.prompt, "num_frames": rec.num_frames,
             "fps": rec.fps}
    if isinstance(rec, schema.PairRecord):
      entry["files"] = {m: f"{stem}/{m}.{fmt}" for m in ("a", "b", "pair")}
      entry["frames_per_segment"] = rec.frames_per_segment
      if rec.segment_labels is not None:
        entry["segment_labels"] = [int(v) for v in rec.segment_labels]
      if rec.global_label is not None:
        entry["global_label"] = int(rec.global_label)
      latents = [rec.latent_a, rec.latent_b]
    else:
      entry["files"] = {"video": f"{stem}.{fmt}"}
      latents = [rec.latent]
    if not all(os.path.exists(os.path.join(out, f)) for f in entry["files"].values()):
      videos = [_scaled(v, scale) for v in decoder(np.stack(latents).astype(np.float32))]
      if len(videos) == 2:
        videos.append(video_io.side_by_side(*videos))
        os.makedirs(os.path.join(out, stem), exist_ok=True)
      for file, video in zip(entry["files"].values(), videos):
        video_io.write_video(os.path.join(out, file), video, rec.fps)
    index.append(entry)
    if n % 16 == 0:
      log(f"decode: {n} records, {n / (time.time() - start):.2f} records/s")
  tmp = os.path.join(out, "index.jsonl.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    for entry in index:
      f.write(json.dumps(entry) + "\n")
  os.replace(tmp, os.path.join(out, "index.jsonl"))
  return index


def decode_dataset(directory: str, name: str, out: str, kind: str = "auto", weights: str = "",
                   fmt: str = "mp4", scale: int = 1, log=print) -> list[dict]:
  """Decodes every record of the dataset `directory/name` into `out` (see the module doc)."""
  side = arrayrecord_io.read_sidecar(directory, name)
  decoder = make_decoder(auto_kind(side) if kind == "auto" else kind, weights)
  index = decode_records(arrayrecord_io.iter_records(directory, name), out, decoder, fmt, scale, log)
  log(f"decode: {len(index)} records of {directory}/{name} -> {out}")
  return index


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--records", required=True, help="DIR/NAME of a record dataset")
  parser.add_argument("--out", required=True)
  parser.add_argument("--decoder", default="auto", choices=DECODERS)
  parser.add_argument("--weights", default="", help="Wan diffusers folder (its vae/)")
  parser.add_argument("--format", default="mp4", choices=("mp4", "gif"))
  parser.add_argument("--scale", type=int, default=1, help="nearest-neighbour upscaling factor")
  args = parser.parse_args(argv)
  directory, name = os.path.split(os.path.normpath(args.records))
  decode_dataset(directory or ".", name, args.out, args.decoder, args.weights, args.format,
                 args.scale)


if __name__ == "__main__":
  main()
