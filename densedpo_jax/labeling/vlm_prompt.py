"""What a VLM is asked and how its answer is read: the versioned template (the paper's Sec. 4.3,
App. A.6: frames of the first video, then the second, then the question), frame sampling at
`sample_fps`, JPEG data URLs, the verdict schema, and a conservative verdict reader.

    url = jpeg_data_url(frame, max_side=512, quality=90)     # uint8 [H, W, 3] -> data URL
    parse_verdict('{"verdict": "second", ...}')              # 'second'; unreadable -> None
"""
from __future__ import annotations

import base64
import io
import json
import re
from typing import Optional

import numpy as np
from PIL import Image

from densedpo_jax.data import schema

TEMPLATE_VERSION = "densedpo-vlm-1"
FIRST_INTRO = "These are frames from the first video, in temporal order:"
SECOND_INTRO = "These are frames from the second video, in temporal order:"
INSTRUCTION = (
    "Both videos were generated from the prompt: \"{prompt}\". They are structurally similar "
    "(same layout and motion), so compare their details and artifacts: deformed limbs, hands or "
    "faces, blur, objects that appear, vanish or deform, flicker. Be conservative: if both have "
    "similar artifacts, or you are not sure, answer tie. Which video has fewer artifacts? Answer "
    "first, second or tie, then a short reason.")
VERDICTS = ("first", "second", "tie")
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["verdict", "reason"],
    "properties": {"verdict": {"type": "string", "enum": list(VERDICTS)},
                   "reason": {"type": "string"}}}}}


FENCE = re.compile(r"^\s*```[A-Za-z]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)
# A free-text verdict: the first line is the word alone, or the word then a stop (". : - ;"), or
# "Answer: word" / "Verdict: word"; "First, let me compare..." is no verdict.
FREE_TEXT = re.compile(r"^(?:(?:answer|verdict)\s*[:=-]\s*)?[\"'*_ ]*(first|second|tie)[\"'*_ ]*"
                       r"(?:$|\s*[.:;\-\u2013\u2014]|\s*\n)", re.IGNORECASE)


def parse_verdict(text: str) -> Optional[str]:
  """'first' | 'second' | 'tie' from a JSON answer (also inside a ``` fence) or a free-text answer
  that states the verdict up front (see `FREE_TEXT`); None otherwise (read conservatively)."""
  text = (text or "").strip()
  if m := FENCE.match(text):
    text = m.group(1).strip()
  try:
    obj = json.loads(text)
    verdict = obj.get("verdict") if isinstance(obj, dict) else obj
    if isinstance(verdict, str) and verdict.strip().lower() in VERDICTS:
      return verdict.strip().lower()
    return None
  except (ValueError, RecursionError):
    pass
  m = FREE_TEXT.match(text)
  return m.group(1).lower() if m else None


def sample_frames(num_frames: int, fps: float, start: int, stop: int, sample_fps: float) -> list[int]:
  """Frame indices in `[start, stop)` at `sample_fps` (every frame when the clip is slower)."""
  step = max(fps / sample_fps, 1.0)
  out, k = [], 0
  while True:
    f = start + int(round(k * step))
    if f >= min(stop, num_frames):
      return out
    out.append(f)
    k += 1


def jpeg_data_url(frame: np.ndarray, max_side: int, quality: int) -> str:
  """uint8 `[H, W, 3]` -> a JPEG data URL, scaled so the longest side is `max_side` pixels."""
  image = Image.fromarray(frame)
  scale = max_side / max(image.size)
  if scale != 1:
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    image = image.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=quality)
  return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def segment_ranges(pair: schema.PairRecord) -> list[tuple[int, int]]:
  """`[start, stop)` pixel frames of each labeled segment (the last absorbs a remainder)."""
  s, n, per = pair.num_segments, pair.num_frames, pair.frames_per_segment
  return [(k * per, n if k == s - 1 else min((k + 1) * per, n)) for k in range(s)]
