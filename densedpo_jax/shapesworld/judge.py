"""The ShapesWorld judge: scores videos from pixels with no learned weights (docs/shapesworld.md).

Per frame (video `[T, H, W, 3]` in [-1, 1], mapped to [0, 1]):
  - coverage `a = max over channels` (every vocabulary colour has a channel at 1, so a clean
    frame's `a` is exactly the shape's coverage); pixels below `NOISE_FLOOR` are background;
  - centroid (y, x) in pixels (coverage-weighted), area (sum of coverage, in pixels), and the
    chroma `sum(rgb) / sum(a)` (the colour at full intensity);
  - the best clean rendering: `world.shape_mask` of each shape at the centroid (refined on a
    quarter-pixel grid) with the world's radius; `iou` = soft IoU `sum(min) / sum(max)`;
  - two measures of light that is neither background nor the shape's colour:
    `off_palette`, the share of the foreground's light off the clip's colour line,
    `sum ||rgb - a * reference|| / sum a` over foreground pixels, against the clip's reference
    colour (the vocabulary colour nearest the median chroma: visual quality does not read the
    prompt); and `background_noise`, the faint light below `NOISE_FLOOR` that the clean
    rendering does not have, `sum max(0, a - mask)` over those pixels, in units of the shape's
    area (pi r^2). Both are 0 on a clean rendering;
  - `frame_quality = iou * (1 - off_palette) * (1 - background_noise)` in [0, 1]. When the
    whole shape carries one hue, `1 - off_palette` is `1 - |chroma - reference|`; pixels of
    other hues count even where the clip's mean colour averages them away.
A frame is clean when `frame_quality >= CLEAN_THRESHOLD`.

Per clip: speed `[T-1]` (centroid displacement, px/frame; empty frames take interpolated
centroids), visual quality (mean frame quality), temporal consistency (stability of area,
colour and shape fit, and bounce-aware smoothness of the path), dynamic degree (VBench style:
moving when at least `round(4 T / 16)` frame pairs exceed `0.2 px/frame * min(H, W) / 16`),
text alignment (share of colour, shape and direction matching the prompt; the direction comes
from fitting the bouncing-motion model to the first half of the path, so an early bounce does
not flip it) and per-segment quality (mean frame quality of the segment's frames).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional, Sequence

import numpy as np

from densedpo_jax.shapesworld import world
from densedpo_jax.shapesworld.world import COLOURS, DIRECTIONS, SHAPES, WorldConfig

# 2: frame quality sees off-palette light and background noise (version 1 did not).
VERSION = 2
NOISE_FLOOR = 0.1          # coverage below this is background
CLEAN_THRESHOLD = 0.8      # frame_quality at or above: a clean frame
SPEED_THRESHOLD_16 = 0.2   # px/frame counted as moving at a 16-pixel frame (scaled with size)
_COLOUR_NAMES = list(COLOURS)
_COLOUR_TABLE = np.asarray([COLOURS[c] for c in _COLOUR_NAMES], np.float32)  # [6, 3]
_REFINE = (-0.25, 0.0, 0.25)


def parse_prompt(prompt: str) -> tuple[str, str, str]:
  """`'a red circle moves up and to the right'` -> `('red', 'circle', 'up-right')`.

  Raises:
    ValueError: naming `prompt` when a colour, shape or direction is missing.
  """
  if not isinstance(prompt, str):
    raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
  words = re.findall(r"[a-z]+", prompt.lower())
  colour = next((w for w in words if w in COLOURS), None)
  shape = next((w for w in words if w in SHAPES), None)
  vertical = next((w for w in words if w in ("up", "down")), None)
  horizontal = next((w for w in words if w in ("left", "right")), None)
  direction = "-".join(w for w in (vertical, horizontal) if w) or None
  if colour is None or shape is None or direction is None:
    raise ValueError(f"prompt {prompt!r}: expected a colour of {_COLOUR_NAMES}, a shape of "
                     f"{list(SHAPES)} and a direction of {list(DIRECTIONS)}")
  return colour, shape, direction


def config_for(video: np.ndarray, config: Optional[WorldConfig] = None) -> WorldConfig:
  """`config` with num_frames, height, width taken from `video [T, H, W, 3]`."""
  config = config or WorldConfig()
  t, h, w = np.shape(video)[:3]
  if (config.num_frames, config.height, config.width) == (t, h, w):
    return config
  return dataclasses.replace(config, num_frames=int(t), height=int(h), width=int(w))


def _check_video(video, name="video") -> np.ndarray:
  v = np.asarray(video, np.float32)
  if v.ndim != 4 or v.shape[-1] != 3 or v.shape[0] < 1:
    raise ValueError(f"{name} must be [T, H, W, 3], got shape {v.shape}")
  return v


def frame_stats(video: np.ndarray, config: Optional[WorldConfig] = None) -> dict[str, np.ndarray]:
  """Per-frame measurements of a video `[T, H, W, 3]` in [-1, 1].

  Returns a dict of arrays:
    present [T] bool (foreground found), centroid [T, 2] (y, x) px (NaN when absent),
    area [T] px, chroma [T, 3] in [0, 1] (NaN when absent), iou [T, len(SHAPES)] soft IoU
    of each shape's clean mask at its best refined centre, best_shape [T] int index into SHAPES,
    background_noise [T] faint light (below NOISE_FLOOR) beyond the best clean mask, in shape
    areas (0 on an empty frame: nothing to fit).
  """
  v = np.clip((_check_video(video) + 1.0) / 2.0, 0.0, 1.0)
  cfg = config_for(v, config)
  t, h, w, _ = v.shape
  raw = v.max(-1)
  a = np.where(raw >= NOISE_FLOOR, raw, 0.0)
  area = a.sum((1, 2))
  present = area >= 0.05 * math.pi * cfg.radius ** 2
  ys = np.arange(h, dtype=np.float32) + 0.5
  xs = np.arange(w, dtype=np.float32) + 0.5
  safe = np.where(present, area, 1.0)
  cy = (a.sum(2) * ys).sum(1) / safe
  cx = (a.sum(1) * xs).sum(1) / safe
  centroid = np.where(present[:, None], np.stack([cy, cx], -1), np.nan)
  chroma = (v * (a > 0)[..., None]).sum((1, 2)) / safe[:, None]
  chroma = np.where(present[:, None], np.clip(chroma, 0.0, 1.0), np.nan)
  iou = np.zeros((t, len(SHAPES)), np.float32)
  noise = np.zeros(t, np.float32)
  faint = np.where(raw < NOISE_FLOOR, raw, 0.0)  # [T, H, W] the light the floor drops
  for f in np.flatnonzero(present):
    best, best_mask = -1.0, None
    for k, shape in enumerate(SHAPES):
      for dy in _REFINE:
        for dx in _REFINE:
          m = world.shape_mask(shape, (cy[f] + dy, cx[f] + dx), cfg.radius, cfg.height, cfg.width,
                               min(cfg.supersample, 8))
          score = _soft_iou(a[f], m)
          iou[f, k] = max(iou[f, k], score)
          if score > best:
            best, best_mask = score, m
    noise[f] = np.maximum(faint[f] - best_mask, 0.0).sum() / (math.pi * cfg.radius ** 2)
  return {"present": present, "centroid": centroid.astype(np.float32), "area": area.astype(np.float32),
          "chroma": chroma.astype(np.float32), "iou": iou, "best_shape": iou.argmax(-1),
          "background_noise": noise}


def _soft_iou(a: np.ndarray, mask: np.ndarray) -> float:
  """Soft IoU `sum(min) / sum(max)` of coverage `a [H, W]` (floored) and a clean mask `[H, W]`."""
  m = np.where(mask >= NOISE_FLOOR, mask, 0.0)
  union = np.maximum(a, m).sum()
  return float(np.minimum(a, m).sum() / union) if union > 0 else 0.0


def off_palette(video: np.ndarray, colour: Optional[str]) -> np.ndarray:
  """Share of each frame's foreground light off the colour line of `colour`, `[T]` in [0, 1].

  `sum ||rgb - a * reference|| / sum a` over the foreground pixels (coverage `a` at or above
  NOISE_FLOOR) of `video [T, H, W, 3]` in [-1, 1]; 1 on a frame with no foreground or when
  `colour` is None (nothing to agree with).
  """
  v = np.clip((_check_video(video) + 1.0) / 2.0, 0.0, 1.0)
  if colour is None:
    return np.ones(v.shape[0], np.float32)
  a = v.max(-1)
  fg = a >= NOISE_FLOOR
  ref = np.asarray(COLOURS[colour], np.float32)
  dev = np.linalg.norm(v - a[..., None] * ref, axis=-1)  # [T, H, W]
  light = np.where(fg, a, 0.0).sum((1, 2))
  off = np.where(fg, dev, 0.0).sum((1, 2)) / np.maximum(light, 1e-12)
  return np.where(light > 0, np.clip(off, 0.0, 1.0), 1.0).astype(np.float32)


def nearest_colour(chroma: np.ndarray) -> str:
  """The vocabulary colour nearest an RGB `[3]` in [0, 1]."""
  return _COLOUR_NAMES[int(np.argmin(np.linalg.norm(_COLOUR_TABLE - chroma, axis=-1)))]


def speed_threshold(config: WorldConfig) -> float:
  """Moving threshold in px/frame: 0.2 at a 16-pixel frame, proportional to min(H, W)."""
  return SPEED_THRESHOLD_16 * min(config.height, config.width) / 16.0


def _fill_centroids(centroid: np.ndarray, present: np.ndarray) -> np.ndarray:
  """Linear interpolation over absent frames (constant beyond the ends); NaN if none present."""
  if not present.any():
    return np.full_like(centroid, np.nan)
  t = np.arange(len(centroid))
  return np.stack([np.interp(t, t[present], centroid[present, k]) for k in range(2)], -1)


def _fold(u, lo, hi):
  length = hi - lo
  if length <= 0:
    return np.full_like(u, lo)
  r = np.mod(u - lo, 2.0 * length)
  return lo + np.where(r <= length, r, 2.0 * length - r)


def detect_direction(path: np.ndarray, shape: str, config: WorldConfig) -> Optional[str]:
  """Initial direction of a centroid path `[T, 2]` (no NaN), or None when it barely moves.

  Per axis, fits `fold(p0 + s * v * t)` (the world's bouncing motion, walls at the shape's
  extent) to the first half of the path, with v the median step and s = -1 or +1, so a bounce in
  the first frames does not reverse the answer.
  """
  k = min(len(path), max(4, len(path) // 2))
  p = path[:k]
  if k < 2:
    return None
  t = np.arange(k, dtype=np.float64)
  margin = world.extent(config.radius, shape)
  velocity = []
  for axis, size in enumerate((config.height, config.width)):
    lo, hi = margin, size - margin
    v = float(np.median(np.abs(np.diff(p[:, axis]))))
    p0 = float(np.clip(p[0, axis], lo, hi))
    errs = [np.abs(_fold(p0 + s * v * t, lo, hi) - p[:, axis]).mean() for s in (-1.0, 1.0)]
    velocity.append((-1.0 if errs[0] < errs[1] else 1.0) * v)
  vel = np.asarray(velocity)
  if np.linalg.norm(vel) < 0.5 * speed_threshold(config):
    return None
  names = list(DIRECTIONS)
  cos = [float(np.dot(vel, DIRECTIONS[n])) for n in names]
  return names[int(np.argmax(cos))]


@dataclasses.dataclass(frozen=True)
class VideoScore:
  """The judge's verdict on one video.

  Attributes:
    frame_quality: `[T]` in [0, 1]: IoU with the best clean rendering x (1 - off_palette) x
      (1 - background_noise).
    speed: `[T-1]` centroid displacement between consecutive frames, px/frame.
    segment_quality: `[S]` mean frame quality of each segment's frames.
    segment_artifact: `[S]` bool, segment quality below CLEAN_THRESHOLD.
    visual_quality: mean frame quality, in [0, 1].
    temporal_consistency: in [0, 1] (mean of area, colour, shape stability and path smoothness).
    moving: dynamic-degree verdict (enough frame pairs above the speed threshold).
    mean_speed: mean of `speed`, px/frame.
    text_alignment: share of colour, shape, direction matching the prompt, in {0, 1/3, 2/3, 1}.
    artifact_share: share of frames with quality below CLEAN_THRESHOLD.
    frame_off_palette: `[T]` share of each frame's foreground light off the clip's colour line
      (1 on an empty frame).
    frame_background_noise: `[T]` faint light beyond the clean rendering, in shape areas.
    off_palette, background_noise: their means over frames.
    detected: (colour, shape, direction) read from the pixels (direction None when static).
    components: the parts of temporal consistency (area, colour, shape, smoothness).
  """
  frame_quality: np.ndarray
  speed: np.ndarray
  segment_quality: np.ndarray
  segment_artifact: np.ndarray
  visual_quality: float
  temporal_consistency: float
  moving: bool
  mean_speed: float
  text_alignment: float
  artifact_share: float
  frame_off_palette: np.ndarray
  frame_background_noise: np.ndarray
  off_palette: float
  background_noise: float
  detected: tuple = ()
  components: dict = dataclasses.field(default_factory=dict)


def segment_index(num_frames: int, frames_per_segment: int, num_segments: Optional[int] = None) -> np.ndarray:
  """Segment of each frame `[T]`: `min(f // frames_per_segment, S - 1)`, S default ceil(T / fps)."""
  if frames_per_segment < 1:
    raise ValueError(f"frames_per_segment must be >= 1, got {frames_per_segment}")
  s = num_segments or -(-num_frames // frames_per_segment)
  return np.minimum(np.arange(num_frames) // frames_per_segment, s - 1)


def judge_video(video: np.ndarray, prompt: str, frames_per_segment: int = 4,
                config: WorldConfig = WorldConfig(), num_segments: Optional[int] = None,
                clean_threshold: float = CLEAN_THRESHOLD) -> VideoScore:
  """Scores one video `[T, H, W, 3]` in [-1, 1] against its prompt (see the module doc).

  `config` supplies the radius (its frame size is taken from the video); `num_segments`
  defaults to ceil(T / frames_per_segment).
  """
  want = parse_prompt(prompt)
  video = _check_video(video)
  cfg = config_for(video, config)
  st = frame_stats(video, cfg)
  t = video.shape[0]
  present = st["present"]
  # Reference colour and shape of the clip (the best clean rendering).
  colour = nearest_colour(np.nanmedian(st["chroma"][present], 0)) if present.any() else None
  shape_idx = int(st["iou"].sum(0).argmax())
  ref = np.asarray(COLOURS[colour]) if colour else np.zeros(3)
  colour_dist = np.where(present, np.linalg.norm(np.nan_to_num(st["chroma"]) - ref, axis=-1), 1.0)
  off = np.where(present, off_palette(video, colour), 1.0)
  noise = st["background_noise"]
  quality = np.where(present, st["iou"].max(-1) * (1.0 - off) * np.clip(1.0 - noise, 0.0, 1.0),
                     0.0).astype(np.float32)
  path = _fill_centroids(st["centroid"], present)
  if np.isnan(path).any():
    speed = np.zeros(max(t - 1, 0), np.float32)
  else:
    speed = np.linalg.norm(np.diff(path, axis=0), axis=-1).astype(np.float32)
  # Temporal consistency.
  expected_area = math.pi * cfg.radius ** 2
  area = st["area"]
  area_stab = float(np.clip(1.0 - area.std() / max(area.mean(), 0.25 * expected_area), 0, 1))
  colour_stab = float(np.clip(1.0 - colour_dist.mean(), 0, 1))
  shape_stab = float(np.mean(present & (st["best_shape"] == shape_idx)))
  smooth = _smoothness(path, speed, SHAPES[shape_idx], cfg) if present.any() else 0.0
  components = {"area": area_stab, "colour": colour_stab, "shape": shape_stab, "smoothness": smooth}
  # Dynamic degree (VBench): at least round(4 T / 16) frame pairs above the threshold.
  need = max(1, int(round(4 * t / 16)))
  num_fast = int(np.sum(speed > speed_threshold(cfg)))
  direction = detect_direction(path, SHAPES[shape_idx], cfg) if not np.isnan(path).any() else None
  detected = (colour, SHAPES[shape_idx] if present.any() else None, direction)
  seg = segment_index(t, frames_per_segment, num_segments)
  seg_q = np.asarray([quality[seg == k].mean() for k in range(seg.max() + 1)], np.float32)
  return VideoScore(
      frame_quality=quality, speed=speed, segment_quality=seg_q, segment_artifact=seg_q < clean_threshold,
      visual_quality=float(quality.mean()), temporal_consistency=float(np.mean(list(components.values()))),
      moving=bool(num_fast >= need), mean_speed=float(speed.mean()) if speed.size else 0.0,
      text_alignment=float(np.mean([d == w for d, w in zip(detected, want)])),
      artifact_share=float(np.mean(quality < clean_threshold)), frame_off_palette=off.astype(np.float32),
      frame_background_noise=noise, off_palette=float(off.mean()), background_noise=float(noise.mean()),
      detected=detected, components=components)


def _smoothness(path, speed, shape, cfg) -> float:
  """1 - mean |second difference| / radius, skipping an axis near its wall (a bounce)."""
  if len(path) < 3:
    return 1.0
  d2 = np.abs(path[2:] - 2 * path[1:-1] + path[:-2])  # [T-2, 2]
  margin = world.extent(cfg.radius, shape)
  step = np.maximum(speed[1:], speed[:-1])[:, None] + 0.5
  mid = path[1:-1]
  size = np.asarray([cfg.height, cfg.width], np.float32)
  near_wall = (mid - margin < step) | (size - margin - mid < step)
  d2 = np.where(near_wall, 0.0, d2)
  return float(np.clip(1.0 - d2.sum(-1).mean() / cfg.radius, 0.0, 1.0))


def score_videos(videos: np.ndarray, prompts: Sequence[str], frames_per_segment: int = 4,
                 config: WorldConfig = WorldConfig()) -> dict[str, float]:
  """Dataset-level scores of `videos [N, T, H, W, 3]` with their `prompts [N]`.

  Returns `aggregate`'s means over videos (visual_quality, temporal_consistency, mean_speed,
  text_alignment, artifact_share, off_palette, background_noise) and motion shares
  (dynamic_degree, fast_share).
  """
  return aggregate(judge_videos(videos, prompts, frames_per_segment, config), config)


def fast_speed(config: WorldConfig = WorldConfig()) -> float:
  """The middle of the world's speed range, px/frame: half of the ground-truth clips are faster."""
  return 0.5 * (config.speed_range[0] + config.speed_range[1])


def aggregate(scores: Sequence[VideoScore], config: WorldConfig = WorldConfig()) -> dict[str, float]:
  """Means over videos of the per-video scores (off_palette and background_noise are each
  video's mean over frames), plus two motion shares:

  dynamic_degree  share of moving videos (VBench style; every ShapesWorld clip moves, so a
                  model that keeps objects in motion saturates it at 1.0);
  fast_share      share of videos whose mean speed exceeds `fast_speed(config)` (0.5 on ground
                  truth): the motion measure that can show a shift towards slow clips.
  """
  out = {key: float(np.mean([getattr(s, key) for s in scores]))
         for key in ("visual_quality", "temporal_consistency", "mean_speed", "text_alignment", "artifact_share",
                     "off_palette", "background_noise")}
  out["dynamic_degree"] = float(np.mean([s.moving for s in scores]))
  out["fast_share"] = float(np.mean([s.mean_speed > fast_speed(config) for s in scores]))
  return out


def segment_speeds(score: VideoScore, frames_per_segment: int, num_segments: int) -> np.ndarray:
  """Mean speed (px/frame) of each segment `[S]`: the frame-to-frame displacements that start in
  it (frame f lies in segment `min(f // frames_per_segment, S - 1)`); NaN for an empty one."""
  seg = np.minimum(np.arange(len(score.speed)) // frames_per_segment, num_segments - 1)
  return np.array([np.mean(score.speed[seg == s]) if (seg == s).any() else np.nan
                   for s in range(num_segments)])


def judge_videos(videos, prompts, frames_per_segment=4, config=WorldConfig()) -> list[VideoScore]:
  """`judge_video` of every video `[N, T, H, W, 3]` with its prompt."""
  if np.ndim(videos) != 5:
    raise ValueError(f"videos must be [N, T, H, W, 3], got shape {np.shape(videos)}")
  if len(prompts) != len(videos):
    raise ValueError(f"prompts has {len(prompts)} entries for {len(videos)} videos")
  if len(videos) == 0:
    raise ValueError("videos is empty")
  return [judge_video(v, p, frames_per_segment, config) for v, p in zip(videos, prompts)]


def artifact_rate_by_speed(videos: np.ndarray, prompts: Sequence[str], true_speeds: Optional[Sequence[float]] = None,
                           buckets: int = 3, frames_per_segment: int = 4,
                           config: WorldConfig = WorldConfig()) -> list[dict]:
  """Artifact share per speed bucket (equal-count buckets by speed quantile, slowest first).

  Speeds are `true_speeds` (px/frame, e.g. the scenes') or the judge's mean speed. Each entry:
  {'bucket', 'speed_lo', 'speed_hi', 'mean_speed', 'num_videos', 'artifact_share',
  'visual_quality'}.
  """
  return speed_buckets(judge_videos(videos, prompts, frames_per_segment, config), true_speeds, buckets)


def speed_buckets(scores: Sequence[VideoScore], true_speeds: Optional[Sequence[float]] = None,
                  buckets: int = 3) -> list[dict]:
  """`artifact_rate_by_speed` from already computed scores."""
  if buckets < 1:
    raise ValueError(f"buckets must be >= 1, got {buckets}")
  speeds = np.asarray([s.mean_speed for s in scores] if true_speeds is None else true_speeds, np.float64)
  if speeds.shape != (len(scores),):
    raise ValueError(f"true_speeds must have one speed per video ({len(scores)}), got shape {speeds.shape}")
  order = np.argsort(speeds, kind="stable")
  out = []
  for b, idx in enumerate(np.array_split(order, buckets)):
    if idx.size == 0:
      continue
    out.append({"bucket": b, "speed_lo": float(speeds[idx].min()), "speed_hi": float(speeds[idx].max()),
                "mean_speed": float(speeds[idx].mean()), "num_videos": int(idx.size),
                "artifact_share": float(np.mean([scores[i].artifact_share for i in idx])),
                "visual_quality": float(np.mean([scores[i].visual_quality for i in idx]))})
  return out


__all__ = ["CLEAN_THRESHOLD", "VERSION", "off_palette", "VideoScore", "aggregate", "artifact_rate_by_speed", "judge_videos", "speed_buckets", "config_for", "detect_direction",
           "frame_stats", "judge_video", "parse_prompt", "score_videos", "segment_index", "speed_threshold"]
