"""Video files in and out: PyAV decoding and encoding, resampling to the model's frame rate and size.

Frames are uint8 RGB `[F, H, W, 3]`; frame rates are in frames per second. The model's pixel
videos (and the Wan VAE's) are float in [-1, 1]; `to_uint8` turns one into frames for a file.

    frames, fps = read_video("in.mp4")
    frames = conform(frames, fps, fps=16, height=480, width=832, path="in.mp4")  # 1 + 4k frames
    write_video("out.mp4", frames, 16)

MP4 files are H.264 (`libx264`, yuv420p, crf 18) where the installed PyAV has it, else MPEG-4
part 2 (`mpeg4`, quality scale 2). Both need even sizes: odd heights or widths are padded by one
row or column (a copy of the edge), so such a file reads back one pixel larger.
"""
from __future__ import annotations

import math
import os
import tempfile
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from densedpo_jax import console

MP4_CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"
_MP4_OPTIONS = {"libx264": {"crf": "18"}, "mpeg4": {"qscale": "2"}}
_AV_ERRORS = (av.error.FFmpegError, OSError, EOFError, ValueError, RuntimeError)


class VideoError(console.JobError, ValueError):
  """A video file that is missing, cannot be decoded, or does not fit what was asked of it."""


# Reading.

def read_video(path: str, seconds: float | None = None) -> tuple[np.ndarray, float]:
  """The frames of the first video stream of `path`: (uint8 RGB `[F, H, W, 3]`, frames per second).

  The rate is the stream's average rate, else its guessed rate, else its base rate. `seconds`
  stops decoding once that much of the clip is read (a long clip is never held whole).
  """
  if not os.path.isfile(path):
    raise VideoError(f"{path}: no such file")
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise VideoError(f"{path}: no video stream")
      fps = _stream_fps(container.streams.video[0], path)
      limit = None if seconds is None else int(math.ceil(seconds * fps)) + 1
      frames = []
      for f in container.decode(video=0):
        frames.append(f.to_ndarray(format="rgb24"))
        if limit is not None and len(frames) >= limit:
          break
  except VideoError:
    raise
  except _AV_ERRORS as e:
    raise VideoError(f"{path}: cannot decode as a video ({type(e).__name__}: {e})") from e
  if not frames:
    raise VideoError(f"{path}: the video stream has no frames")
  return np.stack(frames), fps


def _stream_fps(stream, path: str) -> float:
  for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
    if rate is not None and rate > 0:
      return float(rate)
  raise VideoError(f"{path}: the video stream reports no frame rate")


# Resampling in time and space.

def frame_times(num_src: int, src_fps: float, dst_fps: float, num_frames: int) -> np.ndarray:
  """Source frame indices `[num_frames]` (int) that resample `num_src` frames at `src_fps` to `dst_fps`.

  Output frame k is at k / dst_fps seconds and takes the source frame nearest in time (halves
  round down). ValueError if the source ends before the last output frame, i.e.
  (num_frames - 1) / dst_fps > (num_src - 0.5) / src_fps.
  """
  if src_fps <= 0 or dst_fps <= 0:
    raise ValueError(f"frame rates must be positive; got src_fps={src_fps}, dst_fps={dst_fps}")
  if (num_frames - 1) / dst_fps > (num_src - 0.5) / src_fps:
    raise ValueError(f"{num_frames} frames at {dst_fps} fps last {(num_frames - 1) / dst_fps:.3f} s; "
                     f"the source has {num_src} frames at {src_fps} fps "
                     f"({(num_src - 1) / src_fps:.3f} s)")
  pos = np.arange(num_frames) * (src_fps / dst_fps)  # In source frames.
  idx = np.ceil(pos - 0.5 - 1e-9).astype(np.int64)  # Nearest, halves down.
  return np.clip(idx, 0, num_src - 1)


def max_frames(num_src: int, src_fps: float, fps: float, temporal_factor: int = 4) -> int:
  """The most frames of the form 1 + temporal_factor * k (k >= 0) that `frame_times` allows."""
  n = math.floor((num_src - 0.5) * fps / src_fps + 1e-9) + 1
  return 1 + temporal_factor * ((n - 1) // temporal_factor)


def conform(frames: np.ndarray, src_fps: float, *, fps: float, height: int, width: int,
            temporal_factor: int = 4, num_frames: int | None = None, path: str = "") -> np.ndarray:
  """uint8 `[F, H, W, 3]` at `src_fps` -> uint8 `[num_frames, height, width, 3]` at `fps`.

  `num_frames` (1 + temporal_factor * k) defaults to the most the clip's duration allows at
  `fps`, and at least 1 + temporal_factor. Frames are scaled (bilinear) to cover
  height x width, keeping the aspect ratio, then centre-cropped. `path` names the clip in errors.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"{path}: expected uint8 frames [F, H, W, 3]; got {frames.dtype} {frames.shape}")
  if height % 16 or width % 16 or height <= 0 or width <= 0:
    raise ValueError(f"height and width must be positive multiples of 16; got {height}x{width}")
  if num_frames is not None and (num_frames < 1 or (num_frames - 1) % temporal_factor):
    raise ValueError(f"num_frames must be 1 + {temporal_factor} * k; got {num_frames}")
  available = max_frames(len(frames), src_fps, fps, temporal_factor)
  want = num_frames if num_frames is not None else available
  if want > available or available < 1 + temporal_factor:
    raise VideoError(f"{path}: too short: {len(frames)} frames at {src_fps:g} fps give {available} "
                     f"frames at {fps:g} fps; need {max(want, 1 + temporal_factor)}")
  picked = frames[frame_times(len(frames), src_fps, fps, want)]
  return np.stack([_cover_crop(f, height, width) for f in picked])


def _cover_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 `[H, W, 3]` -> `[height, width, 3]`: bilinear scale to cover, then centre crop."""
  h, w = frame.shape[:2]
  scale = max(height / h, width / w)
  nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
  if (nh, nw) != (h, w):
    frame = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BILINEAR))
  top, left = (nh - height) // 2, (nw - width) // 2
  return frame[top:top + height, left:left + width]


# Writing.

def write_video(path: str, frames: np.ndarray, fps: float) -> str:
  """Writes uint8 `[F, H, W, 3]` at `fps` to `path` (`.mp4` or `.gif`); returns `path`.

  `.mp4`: `MP4_CODEC` (H.264 `libx264`, or `mpeg4` where PyAV lacks it), yuv420p, odd sizes
  padded to even. `.gif`: PIL, 1000 / fps ms a frame, looping. The file is written under a
  temporary name in the same folder and renamed, so `path` is never half written.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise ValueError(f"{path}: expected uint8 frames [F, H, W, 3], F >= 1; "
                     f"got {frames.dtype} {frames.shape}")
  if fps <= 0:
    raise ValueError(f"{path}: fps must be positive; got {fps}")
  ext = os.path.splitext(path)[1].lower()
  writers = {".mp4": _write_mp4, ".gif": _write_gif}
  if ext not in writers:
    raise ValueError(f"{path}: unsupported extension {ext!r}; expected .mp4 or .gif")
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=ext, prefix=".tmp-", dir=folder)
  os.close(fd)
  try:
    writers[ext](tmp, frames, fps)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def _write_mp4(path: str, frames: np.ndarray, fps: float) -> None:
  _, h, w, _ = frames.shape
  frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  with av.open(path, "w", format="mp4") as container:
    stream = container.add_stream(MP4_CODEC, rate=Fraction(fps).limit_denominator(1001),
                                  options=_MP4_OPTIONS[MP4_CODEC])
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())  # Flush.


def _write_gif(path: str, frames: np.ndarray, fps: float) -> None:
  images = [Image.fromarray(f) for f in frames]
  images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                 duration=round(1000 / fps), loop=0)


# Frames for display.

def side_by_side(a: np.ndarray, b: np.ndarray, gap: int = 4) -> np.ndarray:
  """Two videos `[F, H, Wa, 3]`, `[F, H, Wb, 3]` -> `[F, H, Wa + gap + Wb, 3]`, a black gap between."""
  a, b = np.asarray(a), np.asarray(b)
  if a.shape[:2] != b.shape[:2] or a.shape[3:] != b.shape[3:]:
    raise ValueError(f"side_by_side needs the same frame count and height; got {a.shape}, {b.shape}")
  black = np.zeros((*a.shape[:2], gap, *a.shape[3:]), np.result_type(a, b))
  return np.concatenate([a, black, b], axis=2)


def to_uint8(video: np.ndarray) -> np.ndarray:
  """Float video in [-1, 1] (any shape) -> uint8 round((x + 1) * 127.5), values outside clipped."""
  video = np.clip(np.asarray(video, np.float32), -1.0, 1.0)
  return np.round((video + 1.0) * 127.5).astype(np.uint8)
