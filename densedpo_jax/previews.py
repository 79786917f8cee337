"""Video previews: uint8 frames, frame strips, grids, GIF and PNG files.

Inputs are videos `[T, H, W, C]` (or batches `[N, T, H, W, C]`) with values in [-1, 1]. With
C == 3 they are shown as RGB (ShapesWorld pixels, or a decoded latent); any other C is shown as
the channel mean in grey, a look at the latent itself, not a decoded video.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image


def to_uint8(video: np.ndarray) -> np.ndarray:
  """`[..., C]` in [-1, 1] -> uint8 `[..., 3]` in [0, 255] (values outside are clipped)."""
  video = np.asarray(video, np.float32)
  if video.shape[-1] != 3:
    video = np.repeat(video.mean(-1, keepdims=True), 3, axis=-1)
  return np.round((np.clip(video, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def strip(video: np.ndarray) -> np.ndarray:
  """Frames side by side: `[T, H, W, C]` -> uint8 `[H, T*W, 3]`."""
  frames = to_uint8(video)
  return np.concatenate(list(frames), axis=1)


def grid(videos: np.ndarray) -> np.ndarray:
  """One strip a row: `[N, T, H, W, C]` -> uint8 `[N*H, T*W, 3]`."""
  return np.concatenate([strip(v) for v in videos], axis=0)


def save_png(path: str, image: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  Image.fromarray(image).save(path)


def save_gif(path: str, videos: np.ndarray, fps: float = 8.0, scale: int = 4) -> None:
  """Videos `[N, T, H, W, C]` side by side as one looping GIF, each pixel `scale` x `scale`."""
  frames = np.concatenate(list(to_uint8(videos)), axis=2)  # [T, H, N*W, 3]
  frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  images = [Image.fromarray(f) for f in frames]
  images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
