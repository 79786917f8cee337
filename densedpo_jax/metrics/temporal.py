"""Motion and temporal-consistency metrics of one video, from optical flow that needs no weights.

Flow is OpenCV's DIS (dense inverse search, `PRESET_MEDIUM`) on grey frames: a maintained,
weight-free estimator, accurate to a few hundredths of a pixel on textured translation (tested),
fast enough for a thousand 81-frame clips on a CPU. Frames are uint8 RGB `[F, H, W, 3]`.

    motion_px_per_frame   mean flow magnitude over every pixel and consecutive frame pair, in
                          pixels per frame at the file's own size and frame rate
    peak_motion_px_per_frame  mean over consecutive pairs of the mean of the largest 5% flow
                          magnitudes: the speed of what moves, however little of the picture
    dynamic_degree        1.0 / 0.0 by VBench's rule (`vbench/dynamic_degree.py`), on DIS flow
                          instead of RAFT's: frames sampled every max(1, round(fps / 8)); each
                          sampled pair padded to a multiple of 8 (edge copies, as RAFT's
                          InputPadder) and scored by the mean of its largest 5% flow magnitudes;
                          the video moves when at least round(4 * sampled / 16) pairs score above
                          6 * min(H, W) / 256
    temporal_flickering   VBench's score: (255 - mean absolute difference of consecutive frames)
                          / 255, 1 for a still video (VBench applies it to static videos only)
    warping_error         the next frame warped back by the flow, mean absolute error in [0, 1]
                          on the pixels the forward-backward check finds visible in both frames
    occluded_share        the share of pixels that check leaves out (occlusions, flow failures)
"""
from __future__ import annotations

import math

import cv2
import numpy as np

METRICS = ("motion_px_per_frame", "peak_motion_px_per_frame", "dynamic_degree", "temporal_flickering", "warping_error",
           "occluded_share")


def grey(frames: np.ndarray) -> np.ndarray:
  """uint8 RGB `[F, H, W, 3]` -> uint8 `[F, H, W]` (contiguous, as DIS needs)."""
  return np.ascontiguousarray(np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]))


MIN_FLOW_SIDE = 16  # DIS needs a side of 12 px or more; smaller frames are padded for it.


def optical_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """`[H, W, 2]` float32 flow (x, y) from grey frame `a` to `b`: `a(p) ~ b(p + flow(p))`. Frames
  under `MIN_FLOW_SIDE` px a side are padded with copies of their edge, and the flow cropped."""
  dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
  h, w = a.shape[:2]
  ph, pw = max(0, MIN_FLOW_SIDE - h), max(0, MIN_FLOW_SIDE - w)
  if ph or pw:
    pad = lambda x: cv2.copyMakeBorder(x, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
    return dis.calc(pad(a), pad(b), None)[:h, :w]
  return dis.calc(np.ascontiguousarray(a), np.ascontiguousarray(b), None)


def magnitude(flow: np.ndarray) -> np.ndarray:
  return np.hypot(flow[..., 0], flow[..., 1])


# VBench's dynamic degree.

def vbench_interval(fps: float) -> int:
  """Every how many frames VBench samples: max(1, round(fps / 8)) (Python's round, half to even)."""
  return max(1, round(fps / 8))


def pad_to_multiple(frame: np.ndarray, multiple: int = 8) -> np.ndarray:
  """Pads `[H, W]` with copies of its edge to multiples of `multiple`, split as RAFT's
  InputPadder splits it (the odd pixel right and below)."""
  h, w = frame.shape[:2]
  ph, pw = (-h) % multiple, (-w) % multiple
  return cv2.copyMakeBorder(frame, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2,
                            cv2.BORDER_REPLICATE)


def top_share_mean(mag: np.ndarray, share: float = 0.05) -> float:
  """Mean of the largest `int(size * share)` values (VBench's per-pair score)."""
  cut = int(mag.size * share)
  if cut == 0:
    return 0.0
  return float(np.mean(np.sort(mag, axis=None)[::-1][:cut], dtype=np.float64))


def vbench_moves(pair_scores: list[float], num_sampled: int, height: int, width: int) -> bool:
  """VBench's `check_move`: enough sampled pairs score above the size-scaled threshold.

  `num_sampled` frames (so `num_sampled - 1` scores), threshold 6 * min(H, W) / 256 (strictly
  above), count round(4 * num_sampled / 16); as VBench counts inside the loop, a count of 0 moves
  as soon as there is one pair.
  """
  threshold = 6.0 * min(height, width) / 256.0
  needed = round(4 * num_sampled / 16.0)
  count = 0
  for score in pair_scores:
    count += score > threshold
    if count >= needed:
      return True
  return False


def dynamic_degree(grey_frames: np.ndarray, fps: float) -> float:
  """1.0 if the video moves by VBench's rule (on DIS flow), else 0.0."""
  sampled = grey_frames[::vbench_interval(fps)]
  scores = [top_share_mean(magnitude(optical_flow(pad_to_multiple(a), pad_to_multiple(b))))
            for a, b in zip(sampled[:-1], sampled[1:])]
  return float(vbench_moves(scores, len(sampled), *grey_frames.shape[1:3]))


# Temporal consistency.

def temporal_flickering(frames: np.ndarray) -> float:
  """VBench's temporal flickering score: (255 - mean over consecutive pairs of the mean absolute
  difference of all values) / 255."""
  x = frames.astype(np.float32)
  mae = np.abs(x[1:] - x[:-1]).mean(axis=tuple(range(1, x.ndim)), dtype=np.float64)
  return float((255.0 - mae.mean()) / 255.0)


def visible(forward: np.ndarray, backward: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`(mask [H, W] bool, backward flow sampled at p + forward(p))`: the forward-backward
  consistency check (Sundaram et al. 2010; Ruder et al. 2016): a pixel is visible in both frames
  when the two flows cancel, |F + B'|^2 <= 0.01 (|F|^2 + |B'|^2) + 0.5, and it lands inside."""
  h, w = forward.shape[:2]
  grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
  map_x, map_y = grid_x + forward[..., 0], grid_y + forward[..., 1]
  back = cv2.remap(backward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
  err = np.sum((forward + back) ** 2, axis=-1)
  bound = 0.01 * (np.sum(forward ** 2, axis=-1) + np.sum(back ** 2, axis=-1)) + 0.5
  inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
  return (err <= bound) & inside, back


def warp_back(frame: np.ndarray, forward: np.ndarray) -> np.ndarray:
  """`frame` (the next one) sampled at `p + forward(p)`: the previous frame as the flow predicts
  it. `[H, W, C]` float32."""
  h, w = forward.shape[:2]
  grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
  return cv2.remap(frame.astype(np.float32), grid_x + forward[..., 0], grid_y + forward[..., 1],
                   cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def video_metrics(frames: np.ndarray, fps: float) -> dict[str, float | None]:
  """Every metric of `METRICS` for uint8 RGB `frames [F, H, W, 3]` (F >= 2) at `fps`."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames: expected uint8 RGB [F, H, W, 3], got {frames.dtype} "
                     f"{list(frames.shape)}")
  if len(frames) < 2:
    raise ValueError(f"frames: {len(frames)} frame(s); motion needs at least 2")
  if not (math.isfinite(fps) and fps > 0):
    raise ValueError(f"fps={fps}: expected a positive frame rate")
  g = grey(frames)
  motion, peak, warp, occluded = [], [], [], []
  for i in range(len(frames) - 1):
    forward, backward = optical_flow(g[i], g[i + 1]), optical_flow(g[i + 1], g[i])
    motion.append(magnitude(forward).mean(dtype=np.float64))
    peak.append(top_share_mean(magnitude(forward)))
    mask, _ = visible(forward, backward)
    occluded.append(1.0 - mask.mean())
    if mask.any():
      diff = np.abs(frames[i].astype(np.float32) - warp_back(frames[i + 1], forward)).mean(-1)
      warp.append(diff[mask].mean(dtype=np.float64) / 255.0)
  return {"motion_px_per_frame": float(np.mean(motion)),
          "peak_motion_px_per_frame": float(np.mean(peak)),
          "dynamic_degree": dynamic_degree(g, fps),
          "temporal_flickering": temporal_flickering(frames),
          "warping_error": float(np.mean(warp)) if warp else None,  # No pixel visible in both.
          "occluded_share": float(np.mean(occluded))}
