"""Scoring speed of `python -m densedpo_jax.video_metrics` on full-size clips.

    python -m benchmarks.video_metrics_speed                       # 3 clips, 81 x 480 x 832
    python -m benchmarks.video_metrics_speed --clips 2 --frames 121 --height 704 --width 1280

Writes `--clips` H.264 MP4s of a smooth random texture that moves `--speed` px a frame (a
known motion, checked against the score) to a temporary folder, then scores each as the command
does (`metrics.video_files.read_frames`, then `metrics.temporal.video_metrics`) and times the
parts: decoding, the DIS optical flow (forward and backward for every frame pair: the bulk of
it), and the rest (dynamic degree's flow on its sampled pairs, flickering, warping). Prints one
Markdown table: seconds a clip and what that makes per 1,000 clips. Needs the `[interop]`
(PyAV, to write the clips) and `[metrics]` (OpenCV) extras.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np


def moving_texture(frames: int, height: int, width: int, speed: float,
                   seed: int = 0) -> np.ndarray:
  """uint8 RGB `[F, H, W, 3]`: a smooth random texture translated `speed` px a frame along x
  and `speed / 2` along y (whole pixels, no interpolation blur), wrapping at the edges."""
  import cv2
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  base = cv2.GaussianBlur(base, (0, 0), 3)
  base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
  out = np.empty((frames, height, width, 3), np.uint8)
  for i in range(frames):
    out[i] = np.roll(base, (round(i * speed / 2), round(i * speed)), axis=(0, 1))
  return out


def score_parts(path: str) -> dict[str, float]:
  """Seconds of each part of scoring one file, and its mean motion (px/frame)."""
  from densedpo_jax.metrics import temporal, video_files
  start = time.perf_counter()
  frames, fps = video_files.read_frames(path)
  decoded = time.perf_counter()
  g = temporal.grey(frames)
  for i in range(len(g) - 1):  # The flow pairs video_metrics computes, timed alone.
    temporal.optical_flow(g[i], g[i + 1])
    temporal.optical_flow(g[i + 1], g[i])
  flowed = time.perf_counter()
  metrics = temporal.video_metrics(frames, fps)
  scored = time.perf_counter()
  flow = flowed - decoded
  return {"decode": decoded - start, "flow": flow, "rest": max(0.0, scored - flowed - flow),
          "total": (decoded - start) + (scored - flowed), "frames": len(frames),
          "motion": metrics["motion_px_per_frame"]}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--clips", type=int, default=3)
  parser.add_argument("--frames", type=int, default=81)
  parser.add_argument("--height", type=int, default=480)
  parser.add_argument("--width", type=int, default=832)
  parser.add_argument("--fps", type=float, default=16.0)
  parser.add_argument("--speed", type=float, default=2.0, help="px a frame along x")
  args = parser.parse_args(argv)
  from densedpo_jax.interop import video_io
  with tempfile.TemporaryDirectory() as tmp:
    rows = []
    for k in range(args.clips):
      path = os.path.join(tmp, f"clip_{k}.mp4")
      video_io.write_video(path, moving_texture(args.frames, args.height, args.width,
                                                args.speed, seed=k), args.fps)
      rows.append(score_parts(path))
      print(f"clip {k + 1}/{args.clips}: {rows[-1]['total']:.1f} s, motion "
            f"{rows[-1]['motion']:.2f} px/frame", flush=True)
  med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
  true_speed = float(np.hypot(args.speed, args.speed / 2))
  print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"{args.clips} clips of {args.frames} x {args.height} x {args.width} at {args.fps:g} fps; "
        f"medians; known motion {true_speed:.2f} px/frame\n")
  print("| clip | decode | optical flow (fwd + bwd) | rest | total a clip | frames/s | "
        "1,000 clips | motion read (px/frame) |")
  print("|---|---|---|---|---|---|---|---|")
  print(f"| {args.frames} x {args.height} x {args.width} | {med['decode']:.2f} s | "
        f"{med['flow']:.2f} s | {med['rest']:.2f} s | {med['total']:.2f} s | "
        f"{med['frames'] / med['total']:.1f} | {med['total'] * 1000 / 3600:.1f} h | "
        f"{med['motion']:.2f} |")


if __name__ == "__main__":
  main()
