"""A VLM judges an evaluation: every model against the base (the first model), sample by sample.

For each prompt and seed, the model's sample and the base's (same prompt, same noise) are asked
about as the labeler asks about a pair (`labeling/vlm.py`: both orders, kept only when they
agree, else a tie; cache, budgets, failures): once about the whole clip and once a segment.
Outcomes are the model's win / tie / loss rates over samples (whole clips) and over segments,
each with a 95% bootstrap interval over prompts (a prompt's rate is the mean over its seeds).

`config.evaluate.vlm`: every `VLMSettings` field, plus `enabled`, `dry_run` (count the calls and
their estimated cost, ask nothing), `tokens_per_image` and `usd_per_million_tokens` (the
estimate; 0: no price). The number of calls and the estimate are printed before any call.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from densedpo_jax.metrics.bootstrap import bootstrap_diff

MODES = ("whole", "segment")
EXTRA_FIELDS = ("enabled", "dry_run", "tokens_per_image", "usd_per_million_tokens")
TEXT_TOKENS = 300  # The question and the two intros, about; images dominate.


@dataclasses.dataclass(frozen=True)
class Comparison:
  """What the labeler reads of a pair: the model's sample is `a`, the base's `b`."""
  id: str
  prompt: str
  num_frames: int
  fps: float
  frames_per_segment: int

  @property
  def num_segments(self) -> int:
    """Whole segments; the last absorbs the remainder (an 81-frame clip in 16s: 5 segments, not
    a sixth of one frame)."""
    return max(1, self.num_frames // self.frames_per_segment)


def _listing(eval_dir, model: str) -> list[dict]:
  return json.loads((eval_dir / model / "prompts.json").read_text())


def _pixels(path: str) -> np.ndarray:
  """A sample file as the labeler takes videos: `[T, H, W, 3]` in [-1, 1]."""
  from densedpo_jax.metrics.video_files import read_frames
  frames, _ = read_frames(path)
  return frames.astype(np.float32) / 127.5 - 1.0


def _comparisons(eval_dir, models: list[str], name: str, fps: float, frames_per_segment: int):
  """`(Comparison, model's video, base's video)` of every sample, read as they are asked."""
  base, mine = _listing(eval_dir, models[0]), _listing(eval_dir, name)
  if [e["prompt"] for e in base] != [e["prompt"] for e in mine]:
    raise ValueError(f"{eval_dir / name / 'prompts.json'}: its prompts differ from "
                     f"{models[0]}'s; the VLM compares samples of the same prompt and seed")
  for k, (b, m) in enumerate(zip(base, mine)):
    a = _pixels(str(eval_dir / name / m["file"]))
    yield (Comparison(f"{name}/{k}", m["prompt"], len(a), fps, frames_per_segment), a,
           _pixels(str(eval_dir / models[0] / b["file"])))


def settings_of(vlm_spec, mode: str, cache: str):
  from densedpo_jax.labeling.vlm import VLMSettings
  fields = {k: v for k, v in vlm_spec.to_dict().items() if k not in EXTRA_FIELDS}
  return VLMSettings(**dict(fields, mode=mode, cache=fields["cache"] or cache))


def rates(outcomes: np.ndarray, seeds_per_prompt: int) -> dict[str, dict[str, float]]:
  """Win / tie / loss shares of `outcomes [N, K]` (+1 the model, -1 the base, 0 tie; K = 1 for
  whole clips, segments else), each `{mean, lo, hi}` over prompts (bootstrap; lo = hi = mean
  with one prompt)."""
  per_prompt = outcomes.reshape(-1, seeds_per_prompt * outcomes.shape[1])
  out = {}
  for key, value in (("win", 1), ("tie", 0), ("loss", -1)):
    shares = (per_prompt == value).mean(axis=1)
    if len(shares) > 1:
      mean, lo, hi = bootstrap_diff(shares)
    else:
      mean = lo = hi = float(shares.mean())
    out[key] = {"mean": mean, "lo": lo, "hi": hi}
  return out


def judge(eval_dir, models: list[str], vlm_spec, seeds_per_prompt: int, fps: float,
          frames_per_segment: int, log=print) -> dict[str, Any]:
  """`{'calls': counts, 'models': {model: {'whole': rates, 'segment': rates, 'verdicts':
  {prompt: [str]}}}, 'stats': the labelers' counts}`; with `vlm_spec.dry_run`, the counts alone."""
  from densedpo_jax.labeling.vlm import VLMLabeler
  cache = str(eval_dir / "vlm_cache.sqlite")
  labelers = {mode: VLMLabeler(settings_of(vlm_spec, mode, cache)) for mode in MODES}
  # One set of counts, so max_requests and max_total_tokens bound both modes together.
  labelers["segment"].stats = labelers["whole"].stats
  # The calls and their cost, before any is made.
  questions = cached = images = 0
  asked = set()  # A question met twice (a one-segment clip's whole and segment) is asked once.
  for name in models[1:]:
    for item in _comparisons(eval_dir, models, name, fps, frames_per_segment):
      for labeler in labelers.values():
        for _, _, messages, key in labeler.questions(*item):
          questions += 1
          if key in asked or (labeler.cache is not None and labeler.cache.get(key) is not None):
            cached += 1
            continue
          asked.add(key)
          images += sum(p["type"] == "image_url" for p in messages[0]["content"])
  calls = questions - cached
  tokens = images * vlm_spec.tokens_per_image + calls * TEXT_TOKENS
  price = vlm_spec.usd_per_million_tokens
  s = labelers["whole"].settings
  log(f"vlm judge: {questions} questions, {cached} cached: {calls} calls to {s.model} at "
      f"{s.base_url} with {images} images, about {tokens} tokens"
      + (f" (about ${tokens * price / 1e6:.2f})" if price else "")
      + f" (budget: max_requests = {s.max_requests or 'none'})")
  counts = {"questions": questions, "cached": cached, "calls": calls, "images": images,
            "estimated_tokens": tokens}
  if vlm_spec.dry_run:
    return {"calls": counts}
  out: dict[str, Any] = {"calls": counts, "models": {}}
  for name in models[1:]:
    result, verdicts = {}, {}
    for mode, labeler in labelers.items():
      labeled = list(labeler.label_stream(
          _comparisons(eval_dir, models, name, fps, frames_per_segment)))
      outcomes = np.stack([np.atleast_1d(glob if mode == "whole" else seg)
                           for _, seg, glob in labeled]).astype(np.int8)
      result[mode] = rates(outcomes, seeds_per_prompt)
      word = {1: "win", 0: "tie", -1: "loss"}
      for k, (pair, seg, glob) in enumerate(labeled):
        text = (f"seed {k % seeds_per_prompt}: "
                + (word[int(glob)] if mode == "whole" else
                   "segments " + " ".join(word[int(v)] for v in seg)))
        verdicts.setdefault(pair.prompt, []).append(text)
    out["models"][name] = dict(result, verdicts=verdicts)
    log(f"vlm judge: {name} vs {models[0]}: whole clips win {result['whole']['win']['mean']:.2f}"
        f" tie {result['whole']['tie']['mean']:.2f} loss {result['whole']['loss']['mean']:.2f}; "
        f"segments win {result['segment']['win']['mean']:.2f}")
  out["stats"] = dict(labelers["whole"].stats)
  return out
