"""What a VLM is asked and how its answer is read: the versioned template (the paper's Sec. 4.3,
App. A.6: frames of the first video, then the second, then the question), frame sampling at
`sample_fps`, JPEG data URLs, the verdict schema, and a conservative verdict reader.

    url = jpeg_data_url(frame, max_side=512, quality=90)     # uint8 [H, W, 3] -> data URL
    parse_verdict('{"verdict": "second", ...}')              # 'second'; unreadable -> None
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from typing import Any, Optional

import numpy as np
from PIL import Image

from densedpo_jax import previews
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


def messages(instruction: str, prompt: str, frames_first: list[str],
             frames_second: list[str]) -> list[dict]:
  """The user message: first video's frames, second video's frames, then the question."""
  image = lambda url: {"type": "image_url", "image_url": {"url": url}}
  content = ([{"type": "text", "text": FIRST_INTRO}] + [image(u) for u in frames_first]
             + [{"type": "text", "text": SECOND_INTRO}] + [image(u) for u in frames_second]
             + [{"type": "text", "text": instruction.replace("{prompt}", prompt)}])
  return [{"role": "user", "content": content}]


def cache_key(settings: Any, instruction: str, prompt: str, frames_first, frames_second,
              order: str) -> str:
  """Everything that determines an answer: model, template, instruction, prompt, sampling, the
  frames' digests and their order."""
  s = settings
  digest = lambda urls: [hashlib.sha256(u.encode()).hexdigest() for u in urls]
  return hashlib.sha256(json.dumps({
      "model": s.model, "template": TEMPLATE_VERSION, "instruction": instruction,
      "prompt": prompt,
      "sampling": [s.temperature, s.max_tokens, s.sample_fps, s.max_side, s.jpeg_quality],
      "first": digest(frames_first), "second": digest(frames_second), "order": order},
      sort_keys=True).encode()).hexdigest()


def pair_questions(settings: Any, instruction: str, pair: schema.PairRecord,
                   video_a: np.ndarray, video_b: np.ndarray) -> list[tuple]:
  """`[(question index, order, messages, cache key)]` of a pair (`VLMSettings`; videos
  `[T, H, W, 3]` in [-1, 1]): a question per segment ('segment' mode) or one for the clip, each
  asked in both orders."""
  s = settings
  a, b = previews.to_uint8(video_a), previews.to_uint8(video_b)
  ranges = segment_ranges(pair) if s.mode == "segment" else [(0, pair.num_frames)]
  out = []
  for q, (start, stop) in enumerate(ranges):
    idx = sample_frames(pair.num_frames, pair.fps, start, stop, s.sample_fps)
    urls_a = [jpeg_data_url(a[i], s.max_side, s.jpeg_quality) for i in idx]
    urls_b = [jpeg_data_url(b[i], s.max_side, s.jpeg_quality) for i in idx]
    for order, first, second in (("ab", urls_a, urls_b), ("ba", urls_b, urls_a)):
      out.append((q, order, messages(instruction, pair.prompt, first, second),
                  cache_key(s, instruction, pair.prompt, first, second, order)))
  return out
