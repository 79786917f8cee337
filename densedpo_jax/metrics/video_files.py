"""Video files as frames for the metrics: uint8 RGB `[F, H, W, 3]` and the file's frame rate,
with one clear error for a file that is empty, truncated or not a video."""
from __future__ import annotations

import math
import os

import numpy as np


class VideoReadError(ValueError):
  """A video file that is empty, truncated or cannot be decoded."""


def read_frames(path: str):
  """`(uint8 RGB [F, H, W, 3], fps)` of a video file. GIFs through Pillow (their frame delays
  give the rate), everything else through OpenCV's FFmpeg, which reads files as VBench does."""
  if not os.path.isfile(path):
    raise VideoReadError(f"{path}: no such file")
  if os.path.getsize(path) == 0:
    raise VideoReadError(f"{path}: empty file (0 bytes)")
  if path.lower().endswith(".gif"):
    from PIL import Image, ImageSequence
    try:
      with Image.open(path) as im:
        frames, delays = [], []
        for frame in ImageSequence.Iterator(im):
          frames.append(np.asarray(frame.convert("RGB")))
          delays.append(frame.info.get("duration", 100) or 100)
    except (OSError, ValueError, EOFError) as e:
      raise VideoReadError(f"{path}: cannot be decoded as a GIF ({e})") from e
    return np.stack(frames), 1000.0 / float(np.mean(delays))
  import cv2
  capture = cv2.VideoCapture(path)
  try:
    if not capture.isOpened():
      raise VideoReadError(f"{path}: cannot be decoded (not a video, or truncated before its "
                           "index)")
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    while True:
      ok, frame = capture.read()
      if not ok:
        break
      frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
  finally:
    capture.release()
  if not frames:
    raise VideoReadError(f"{path}: no frame could be decoded")
  if expected > 0 and len(frames) < expected:
    raise VideoReadError(f"{path}: truncated: decoded {len(frames)} of the {expected} frames its "
                         "header lists")
  if not (math.isfinite(fps) and fps > 0):
    raise VideoReadError(f"{path}: no frame rate in the file")
  return np.stack(frames), fps
