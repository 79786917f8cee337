"""Synthetic artifacts: corrupt a range of frames of a ShapesWorld video (docs/shapesworld.md).

Every function takes a video float `[T, H, W, 3]` in [-1, 1] (black background), the frames to
corrupt (a sequence of indices, a slice or a bool mask `[T]`), a severity in [0, 1] (0 leaves the
video unchanged, 1 is the strongest) and an rng (`np.random.Generator` or an int seed), and
returns a new float32 video in [-1, 1]; frames outside `frames` are returned unchanged.

The random choices (stretch axis, flicker colours, ghost side) are drawn before the severity is
used, so for a fixed seed the corruption grows monotonically with severity.

Kinds (`KINDS`):
  deformation  stretch the object about its centroid along a random axis (up to 2.2x / 0.45x)
  flicker      per-frame colour shift towards another vocabulary colour (mix share = severity)
  ghosting     a faint copy (intensity 0.8 * severity) 1.5 radii away along the motion
  vanishing    the object fades (intensity 1 - severity; gone at 1)
  blur         Gaussian blur, sigma = 2.5 * severity pixels
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from densedpo_jax.shapesworld.world import COLOURS

KINDS = ("deformation", "flicker", "ghosting", "vanishing", "blur")
_COLOUR_TABLE = np.asarray(list(COLOURS.values()), np.float32)
Frames = Union[Sequence[int], slice, np.ndarray]


def _prepare(video, frames, severity, rng):
  """Checks arguments; returns (unit video [T, H, W, 3] in [0, 1], frame indices, severity, rng)."""
  v = np.asarray(video, np.float32)
  if v.ndim != 4 or v.shape[-1] != 3:
    raise ValueError(f"video must be [T, H, W, 3], got shape {v.shape}")
  if not 0.0 <= float(severity) <= 1.0:
    raise ValueError(f"severity must be in [0, 1], got {severity}")
  t = v.shape[0]
  if isinstance(frames, slice):
    idx = np.arange(t)[frames]
  else:
    f = np.asarray(frames)
    idx = np.flatnonzero(f) if f.dtype == np.bool_ else f.astype(int).reshape(-1)
  if idx.size and (idx.min() < -t or idx.max() >= t):
    raise ValueError(f"frames {idx.tolist()} out of range for a video of {t} frames")
  if not isinstance(rng, np.random.Generator):
    rng = np.random.default_rng(rng)
  return np.clip((v + 1.0) / 2.0, 0.0, 1.0), np.sort(np.mod(idx, t)), float(severity), rng


def _finish(unit):
  return (2.0 * np.clip(unit, 0.0, 1.0) - 1.0).astype(np.float32)


def _centroids(unit):
  """Coverage-weighted centroid `[T, 2]` (y, x) px and coverage `[T, H, W]`; centre if empty."""
  a = unit.max(-1)
  _, h, w = a.shape
  mass = a.sum((1, 2))
  ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
  safe = np.where(mass > 0, mass, 1.0)
  cy = np.where(mass > 0, (a.sum(2) * ys).sum(1) / safe, h / 2)
  cx = np.where(mass > 0, (a.sum(1) * xs).sum(1) / safe, w / 2)
  return np.stack([cy, cx], -1), a


def _sample(img, y, x):
  """Bilinear sample of `img [H, W, C]` at float pixel coordinates `y, x [H, W]` (pixel-centre
  convention: pixel (i, j) is at (i + 0.5, j + 0.5)); zero outside."""
  h, w, _ = img.shape
  pad = np.pad(img, ((1, 1), (1, 1), (0, 0)))
  yy, xx = np.clip(y - 0.5 + 1, 0, h + 1), np.clip(x - 0.5 + 1, 0, w + 1)
  y0, x0 = np.floor(yy).astype(int), np.floor(xx).astype(int)
  y1, x1 = np.minimum(y0 + 1, h + 1), np.minimum(x0 + 1, w + 1)
  fy, fx = (yy - y0)[..., None], (xx - x0)[..., None]
  return ((1 - fy) * (1 - fx) * pad[y0, x0] + (1 - fy) * fx * pad[y0, x1]
          + fy * (1 - fx) * pad[y1, x0] + fy * fx * pad[y1, x1])


def deformation(video, frames: Frames, severity: float, rng) -> np.ndarray:
  """Stretches the object about its centroid by `1 + 1.2 s` along a random axis and squeezes it
  by `1 / (1 + 1.2 s)` across (area kept), a fresh axis each frame."""
  unit, idx, s, rng = _prepare(video, frames, severity, rng)
  angles = rng.uniform(0, np.pi, size=len(idx))
  cen, _ = _centroids(unit)
  h, w = unit.shape[1:3]
  gy, gx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
  out = unit.copy()
  k = 1.0 + 1.2 * s
  for f, ang in zip(idx, angles):
    dy, dx = gy - cen[f, 0], gx - cen[f, 1]
    c, si = np.cos(ang), np.sin(ang)
    u, v = c * dy + si * dx, -si * dy + c * dx   # rotate into the stretch frame
    u, v = u / k, v * k                         # inverse map: stretch along u
    out[f] = _sample(unit[f], cen[f, 0] + c * u - si * v, cen[f, 1] + si * u + c * v)
  return _finish(out)


def flicker(video, frames: Frames, severity: float, rng) -> np.ndarray:
  """Mixes each corrupted frame's colours towards another vocabulary colour (share = severity)."""
  unit, idx, s, rng = _prepare(video, frames, severity, rng)
  picks = rng.integers(len(_COLOUR_TABLE) - 1, size=len(idx))
  out = unit.copy()
  for f, pick in zip(idx, picks):
    a = unit[f].max(-1)
    mass = a.sum()
    own = (unit[f].sum((0, 1)) / mass) if mass > 0 else np.zeros(3)
    own_idx = int(np.argmin(np.linalg.norm(_COLOUR_TABLE - own, axis=-1)))
    other = _COLOUR_TABLE[pick + (pick >= own_idx)]
    out[f] = (1 - s) * unit[f] + s * a[..., None] * other
  return _finish(out)


def ghosting(video, frames: Frames, severity: float, rng) -> np.ndarray:
  """Adds a faint copy (intensity `0.8 s`) of the object 1.5 radii behind it along the motion
  (the direction between neighbouring centroids; random when static), pixel-max blended."""
  unit, idx, s, rng = _prepare(video, frames, severity, rng)
  fallback = rng.uniform(0, 2 * np.pi, size=len(idx))
  cen, a = _centroids(unit)
  t = unit.shape[0]
  out = unit.copy()
  for f, ang in zip(idx, fallback):
    step = cen[min(f + 1, t - 1)] - cen[max(f - 1, 0)]
    norm = np.linalg.norm(step)
    d = step / norm if norm > 1e-3 else np.asarray([np.sin(ang), np.cos(ang)])
    radius = np.sqrt(max(a[f].sum(), 1.0) / np.pi)
    off = -1.5 * radius * d
    h, w = unit.shape[1:3]
    end = cen[f] + off
    if not (0 <= end[0] < h and 0 <= end[1] < w):
      off = -off  # keep the ghost in frame
    gy, gx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    ghost = _sample(unit[f], gy - off[0], gx - off[1])
    out[f] = np.maximum(unit[f], 0.8 * s * ghost)
  return _finish(out)


def vanishing(video, frames: Frames, severity: float, rng) -> np.ndarray:
  """Fades the object: intensity `1 - severity` (gone at 1). `rng` is accepted for uniformity."""
  unit, idx, s, _ = _prepare(video, frames, severity, rng)
  out = unit.copy()
  out[idx] = unit[idx] * (1.0 - s)
  return _finish(out)


def _blur_matrix(n, sigma):
  """`[n, n]` row-normalised Gaussian convolution matrix of sigma px (zero padding outside)."""
  i = np.arange(n)
  k = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
  full = np.exp(-0.5 * (np.arange(-3 * n, 3 * n + 1) / sigma) ** 2).sum()
  return (k / full).astype(np.float32)


def blur(video, frames: Frames, severity: float, rng) -> np.ndarray:
  """Gaussian blur of sigma `2.5 * severity` px (zero padding). `rng` is accepted for uniformity."""
  unit, idx, s, _ = _prepare(video, frames, severity, rng)
  out = unit.copy()
  if s == 0 or idx.size == 0:
    return _finish(out)
  h, w = unit.shape[1:3]
  ky, kx = _blur_matrix(h, 2.5 * s), _blur_matrix(w, 2.5 * s)
  out[idx] = np.einsum("ij,fjkc,lk->filc", ky, unit[idx], kx)
  return _finish(out)


_FUNCTIONS = {"deformation": deformation, "flicker": flicker, "ghosting": ghosting,
              "vanishing": vanishing, "blur": blur}


def corrupt(video, frames: Frames, kind: str, severity: float, rng=0) -> np.ndarray:
  """Applies artifact `kind` (one of KINDS) to `frames` of `video [T, H, W, 3]`; see the module doc."""
  if kind not in _FUNCTIONS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  return _FUNCTIONS[kind](video, frames, severity, rng)


def segment_frames(segment: int, frames_per_segment: int, num_frames: int) -> np.ndarray:
  """Frame indices of segment `segment` (the last segment absorbs no leftovers: ceil layout)."""
  if not 0 <= segment * frames_per_segment < num_frames:
    raise ValueError(f"segment {segment} of {frames_per_segment} frames is outside {num_frames} frames")
  return np.arange(segment * frames_per_segment, min((segment + 1) * frames_per_segment, num_frames))


__all__ = ["KINDS", "blur", "corrupt", "deformation", "flicker", "ghosting", "segment_frames", "vanishing"]
