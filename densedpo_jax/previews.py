"""Video previews: uint8 frames, frame strips, grids, GIF and PNG files.

Inputs are videos `[T, H, W, C]` (or batches `[N, T, H, W, C]`) with values in [-1, 1]. With
C == 3 they are shown as RGB (ShapesWorld pixels, or a decoded latent); any other C is shown as
the channel mean in grey, a look at the latent itself, not a decoded video.

Previews for people (`pair_preview`, `save_video`, `captioned_grid`) upscale small frames, mark
each segment's label under each member of a pair (WIN green, LOSE red, TIE grey) and add captions.
"""
from __future__ import annotations

import os

import numpy as np
from etils import epath
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


def _save_images(path: str, images: list, **kwargs) -> None:
  """PIL `images` (one: PNG; several: an animated GIF) to `path`, local or `gs://...`."""
  out = epath.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  with out.open("wb") as f:
    images[0].save(f, format=os.path.splitext(path)[1][1:].upper() or "PNG",
                   **(dict(save_all=True, append_images=images[1:], **kwargs) if kwargs else {}))


def save_png(path: str, image: np.ndarray) -> None:
  _save_images(path, [Image.fromarray(image)])


def save_gif(path: str, videos: np.ndarray, fps: float = 8.0, scale: int = 4) -> None:
  """Videos `[N, T, H, W, C]` side by side as one looping GIF, each pixel `scale` x `scale`."""
  frames = np.concatenate(list(to_uint8(videos)), axis=2)  # [T, H, N*W, 3]
  frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
  _save_images(path, [Image.fromarray(f) for f in frames], duration=int(1000 / fps), loop=0)


# Previews for people: pairs with their segment labels, captions, video files.

WIN = (46, 160, 67)  # Green: this member wins the segment.
LOSE = (214, 39, 40)  # Red: this member loses it.
TIE = (150, 150, 150)  # Grey: a tie.
UNLABELED = (40, 40, 40)  # Dark grey: no label.
LINE_HEIGHT = 14  # Pixels a caption line.


def upscale(frames: np.ndarray, min_side: int = 128) -> np.ndarray:
  """uint8 `[..., H, W, 3]` -> `[..., k*H, k*W, 3]`, nearest neighbour.

  k >= 1 is the smallest integer with min(H, W) * k >= min_side (16x16 frames -> 128x128).
  """
  frames = np.asarray(frames)
  if frames.ndim < 3:
    raise ValueError(f"upscale expects frames [..., H, W, C], got shape {frames.shape}")
  side = min(frames.shape[-3:-1])
  if side < 1:
    raise ValueError(f"upscale expects non-empty frames, got shape {frames.shape}")
  k = max(1, -(-min_side // side))
  return frames.repeat(k, axis=-3).repeat(k, axis=-2)


def segment_of_frames(num_frames: int, frames_per_segment: int, num_segments: int) -> np.ndarray:
  """Segment index of each pixel frame, int `[num_frames]`: min(f // frames_per_segment, S - 1).

  S = num_segments must be ceil (a short last segment) or floor (the last segment takes the
  remainder) of num_frames / frames_per_segment, as in `data/segments.py`.
  """
  fps, s = frames_per_segment, num_segments
  if fps < 1 or s < 1 or not (s - 1) * fps < num_frames < (s + 1) * fps:
    raise ValueError(f"{s} segments of {fps} frames do not fit num_frames={num_frames}: expected "
                     f"ceil or floor of num_frames / frames_per_segment segments")
  return np.minimum(np.arange(num_frames) // fps, s - 1)


def label_strip_colours(labels, member: str, frames_per_segment: int,
                        num_frames: int) -> np.ndarray:
  """Each frame's label colour for one member of a pair: uint8 `[num_frames, 3]`.

  labels: `[S]` segment labels, +1 video a wins, -1 video b wins, 0 tie (None, or a None entry:
  UNLABELED). member 'a' shows +1 as WIN and -1 as LOSE; member 'b' the opposite.
  """
  if member not in ("a", "b"):
    raise ValueError(f"member must be 'a' or 'b', got {member!r}")
  if labels is None:
    return np.tile(np.array(UNLABELED, np.uint8), (num_frames, 1))
  sign = 1 if member == "a" else -1
  table = {sign: WIN, -sign: LOSE, 0: TIE}
  colours = []
  for label in labels:  # A list, NumPy or JAX array; None entries are unlabelled segments.
    value = None if label is None else float(label)
    if value is not None and value not in table:
      raise ValueError(f"segment labels must be +1, -1, 0 or None, got {label!r}")
    colours.append(UNLABELED if value is None else table[value])
  index = segment_of_frames(num_frames, frames_per_segment, len(colours))
  return np.array(colours, np.uint8)[index]


def _wrap(text: str, width: int, draw, font) -> list[str]:
  """Lines of `text` that fit `width` px: split at words, words too long split at characters."""
  lines = []
  for paragraph in text.split("\n"):
    line = ""
    for word in paragraph.split(" "):
      candidate = f"{line} {word}" if line else word
      if draw.textlength(candidate, font=font) <= width:
        line = candidate
        continue
      if line:
        lines.append(line)
      line = ""
      for ch in word:
        if line and draw.textlength(line + ch, font=font) > width:
          lines.append(line)
          line = ""
        line += ch
    lines.append(line)
  return lines


def caption_band(text: str, width: int, min_lines: int = 0) -> np.ndarray:
  """White text on black, wrapped to `width` px: uint8 `[LINE_HEIGHT * lines, width, 3]`.

  Lines are max(min_lines, wrapped lines); an empty text with min_lines 0 is a band 0 px high.
  """
  from PIL import ImageDraw, ImageFont
  font = ImageFont.load_default()
  draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  lines = _wrap(text, max(width - 4, 1), draw, font) if text else []
  band = Image.new("RGB", (width, LINE_HEIGHT * max(min_lines, len(lines))))
  draw = ImageDraw.Draw(band)
  for i, line in enumerate(lines):
    draw.text((2, LINE_HEIGHT * i + 1), line, fill=(255, 255, 255), font=font)
  return np.asarray(band, np.uint8)


def _as_pixels(video) -> np.ndarray:
  video = np.asarray(video)
  return video if video.dtype == np.uint8 else to_uint8(video)


def pair_preview(video_a, video_b, segment_labels=None, frames_per_segment: int = 4,
                 caption: str = "", min_side: int = 128, strip_height: int | None = None,
                 gap: int = 4) -> np.ndarray:
  """A labelled pair, a beside b: uint8 `[T, cap + H' + strip, 2*W' + gap, 3]`.

  video_a, video_b: `[T, H, W, 3]`, uint8 pixels (float is read as [-1, 1]). Both are upscaled
  (`upscale(min_side)`, H' = k*H); under each a strip `strip_height` px high (default
  max(4, H' // 16)) shows that frame's label colour for that member (`label_strip_colours`),
  exact colours. A black gap of `gap` px separates the members. A non-empty caption adds a band
  on top (`caption_band`: 14 px a line, wrapped at words to the frame's width).
  """
  a, b = _as_pixels(video_a), _as_pixels(video_b)
  if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
    raise ValueError(f"pair_preview expects two videos [T, H, W, 3] of one shape, got {a.shape} "
                     f"and {b.shape}")
  a, b = upscale(a, min_side), upscale(b, min_side)
  t, h, w, _ = a.shape
  strip_height = max(4, h // 16) if strip_height is None else strip_height
  members = []
  for video, member in ((a, "a"), (b, "b")):
    colours = label_strip_colours(segment_labels, member, frames_per_segment, t)
    strip = np.broadcast_to(colours[:, None, None, :], (t, strip_height, w, 3))
    members.append(np.concatenate([video, strip], axis=1))
  black = np.zeros((t, h + strip_height, gap, 3), np.uint8)
  frames = np.concatenate([members[0], black, members[1]], axis=2)
  if caption:
    band = caption_band(caption, frames.shape[2])
    frames = np.concatenate([np.broadcast_to(band, (t, *band.shape)), frames], axis=1)
  return np.ascontiguousarray(frames)


def save_video(path: str, frames: np.ndarray, fps: float = 8.0) -> None:
  """Writes uint8 frames `[T, H, W, 3]` (e.g. `pair_preview`) at `fps` to `.gif` or `.mp4`.

  `.gif`: PIL, looping, 1000 / fps ms a frame (palette colours may move a few levels; PIL merges
  identical consecutive frames, summing their durations). `.mp4`: `interop.video_io.write_video`
  (H.264 with PyAV).
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise ValueError(f"{path}: expected uint8 frames [T, H, W, 3], T >= 1; got {frames.dtype} "
                     f"{frames.shape}")
  if fps <= 0:
    raise ValueError(f"{path}: fps must be positive, got {fps}")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".mp4":
    try:
      from densedpo_jax.interop import video_io
    except ImportError as e:
      raise ImportError(f"{path}: writing .mp4 needs PyAV (pip install av): {e}") from e
    video_io.write_video(path, frames, fps)
    return
  if ext != ".gif":
    raise ValueError(f"{path}: unsupported extension {ext!r}; expected .gif or .mp4")
  _save_images(path, [Image.fromarray(f) for f in frames], duration=round(1000 / fps), loop=0)


def captioned_grid(videos: np.ndarray, captions, min_side: int = 64) -> np.ndarray:
  """One row a video, each under its caption: `[N, T, H, W, C]` in [-1, 1] -> uint8 image.

  Shape `[N * (cap + H'), T * W', 3]`, frames upscaled (`upscale(min_side)`, H' = k*H) side by
  side; every caption band is cap = 14 px times the most lines any caption wraps to.
  """
  videos = np.asarray(videos)
  if videos.ndim != 5 or len(captions) != len(videos):
    raise ValueError(f"captioned_grid expects videos [N, T, H, W, C] and N captions, got "
                     f"{videos.shape} and {len(captions)} captions")
  frames = upscale(to_uint8(videos), min_side)  # [N, T, H', W', 3]
  n, t, h, w, _ = frames.shape
  rows = frames.transpose(0, 2, 1, 3, 4).reshape(n, h, t * w, 3)
  bands = [caption_band(c, t * w) for c in captions]
  lines = max(band.shape[0] for band in bands) // LINE_HEIGHT
  bands = [caption_band(c, t * w, min_lines=lines) for c in captions]
  return np.concatenate([np.concatenate([band, row]) for band, row in zip(bands, rows)])
