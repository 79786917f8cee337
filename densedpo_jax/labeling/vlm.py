"""Segment labels from a vision-language model over the OpenAI Chat Completions protocol.

The paper's recipe (Sec. 4.3, App. A.6): for one short segment of an aligned pair, the frames of
the first video (8 fps) as separate images, then those of the second, then the question; asked
again with the videos swapped, and kept only when both orders agree (else a tie). `mode='whole'`
asks once per order about the whole clip (the paper's long-video comparison).

    labeler = VLMLabeler(VLMSettings(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-VL-7B-Instruct"))
    seg, glob = labeler.label(pair, video_a, video_b)     # videos [T, H, W, 3] in [-1, 1]

Works with hosted APIs and local servers (vLLM, SGLang, Ollama). The API key comes from the
environment variable named in the settings. Answers are cached on disk (sqlite, JSON values),
keyed by everything that determines them, so a rerun after a crash pays no call twice.

Nothing is faked: the client's hidden retries are off and every HTTP attempt is counted (and
budgeted: `max_requests` counts attempts, `max_total_tokens` reserves tokens for calls in flight);
a server that cannot be reached, a reply that is not a Chat Completion, a wrong key, model or URL,
and failures past `max_failure_share` stop the run with `VLMError` (a labeled dataset is written
only when the run completes). A question that still fails after its retries is a failure, recorded
as a tie only while failures stay under that share.
"""
from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import hashlib
import os
import time
from typing import Any, Optional

import numpy as np
from absl import logging

from densedpo_jax import console
from densedpo_jax.data import schema
from densedpo_jax.labeling.oracle import Labeler, majority_vote
from densedpo_jax.labeling.vlm_cache import AnswerCache
from densedpo_jax.labeling.vlm_prompt import (INSTRUCTION, RESPONSE_FORMAT, TEMPLATE_VERSION,
                                              pair_questions, parse_verdict)

# Set in a question's task while it is still counted in `_outstanding` (admitted, no attempt yet).
_NOT_YET_ASKED = contextvars.ContextVar("densedpo_vlm_not_yet_asked", default=False)


class BudgetExceeded(console.JobError, RuntimeError):
  """The request or token budget is spent; answers so far are cached, a rerun resumes."""


class VLMError(console.JobError, RuntimeError):
  """The server cannot give labels (unreachable, malformed replies, too many failures): the run
  stops and writes no dataset; answers so far are cached."""


@dataclasses.dataclass(frozen=True)
class VLMSettings:
  """Where to ask and how. `instruction` '' means the versioned default (`INSTRUCTION`)."""
  base_url: str = "https://api.openai.com/v1"
  model: str = "gpt-4o"
  api_key_env: str = "OPENAI_API_KEY"
  instruction: str = ""
  mode: str = "segment"  # 'segment' (2 calls a segment) | 'whole' (2 calls a pair)
  sample_fps: float = 8.0
  max_side: int = 512  # Longest image side in pixels (small frames are scaled up, nearest).
  jpeg_quality: int = 90
  temperature: float = 0.0
  max_tokens: int = 200
  json_schema: str = "auto"  # 'auto' (try response_format, fall back to text) | 'on' | 'off'
  concurrency: int = 8
  timeout_s: float = 60.0
  max_retries: int = 4  # Attempts after the first on 408/429/5xx, timeouts, dropped connections.
  retry_backoff_s: float = 1.0  # Wait before retry k: retry_backoff_s * 2 ** k (at most 30 s).
  max_requests: int = 0  # HTTP attempts allowed this run (cache hits are free); 0: no limit.
  max_total_tokens: int = 0  # Tokens allowed this run (in-flight calls reserved); 0: no limit.
  # Stop (no dataset) when more than this share of questions failed; over the first
  # `early_pairs` pairs the bar is half of them.
  max_failure_share: float = 0.1
  early_pairs: int = 4
  cache: str = ""  # sqlite file; '' disables the cache.

  def __post_init__(self):
    if self.mode not in ("segment", "whole"):
      raise ValueError(f"VLMSettings.mode={self.mode!r}; expected 'segment' or 'whole'")
    if self.json_schema not in ("auto", "on", "off"):
      raise ValueError(f"VLMSettings.json_schema={self.json_schema!r}; expected auto, on or off")



class VLMLabeler(Labeler):
  """A `Labeler` asking a Chat Completions VLM; see the module doc. Counts in `stats`."""
  name = "vlm"

  def __init__(self, settings: VLMSettings, client=None):
    self.settings = settings
    self.instruction = settings.instruction or INSTRUCTION
    self._client = client
    self._json = settings.json_schema != "off"
    self.cache = AnswerCache(settings.cache) if settings.cache else None
    self.stats = {"requests": 0, "calls": 0, "cache_hits": 0, "failures": 0, "retried": 0,
                  "failed_attempts": 0, "disagreements": 0, "tie_segments": 0, "segments": 0,
                  "tokens": 0, "pairs": 0}
    self.details: dict[str, list[dict]] = {}  # Pair id -> raw answers of each question.
    self._started = time.time()
    self._loop = asyncio.new_event_loop()  # One loop for the client's connections, every pair.
    self._probed = False
    self._probe_lock, self._calibration_lock = asyncio.Lock(), asyncio.Lock()
    self._tokens_per_call = 0  # The most tokens one call has used.
    self._reserved = 0  # Tokens held by calls in flight.
    self._last_error = ""
    self._fatal: Optional[VLMError] = None  # The first error that makes every later call futile.
    self._outstanding = 0  # Uncached questions of started pairs not yet asked (request budget).

  @property
  def params(self) -> dict[str, Any]:
    s = self.settings
    return {"template_version": TEMPLATE_VERSION, "model": s.model, "base_url": s.base_url,
            "mode": s.mode, "sample_fps": s.sample_fps, "max_side": s.max_side,
            "temperature": s.temperature, "instruction_sha256":
            hashlib.sha256(self.instruction.encode()).hexdigest()[:16]}

  # Requests.

  def questions(self, pair: schema.PairRecord, video_a: np.ndarray, video_b: np.ndarray):
    """`[(question index, order, messages, cache key)]` of a pair: two orders a question."""
    return pair_questions(self.settings, self.instruction, pair, video_a, video_b)

  # Calls.

  def client(self):
    if self._client is None:
      try:
        import openai  # The [vlm] extra.
      except ModuleNotFoundError:
        raise VLMError("labeler=vlm needs the [vlm] extra (module 'openai' is not installed): "
                       "pip install -e '.[vlm]' in a clone, or pip install 'openai>=1.40'") from None
      key = os.environ.get(self.settings.api_key_env, "")
      # No hidden retries: every attempt goes through `_attempt`, counted and budgeted.
      self._client = openai.AsyncOpenAI(base_url=self.settings.base_url, api_key=key or "none",
                                        timeout=self.settings.timeout_s, max_retries=0)
    return self._client

  def _where(self) -> str:
    return f"{self.settings.model} at {self.settings.base_url}"

  def _reserve(self) -> int:
    """Counts one HTTP attempt against the budgets, or raises `BudgetExceeded`; returns the tokens
    reserved for it (the most one call has used so far)."""
    s, st = self.settings, self.stats
    if s.max_requests and st["calls"] >= s.max_requests:
      raise BudgetExceeded(f"request budget spent: {st['calls']} HTTP attempts (max_requests = "
                           f"{s.max_requests}); answers so far are cached, rerun to continue")
    need = self._tokens_per_call
    if s.max_total_tokens and st["tokens"] + self._reserved + need > s.max_total_tokens:
      raise BudgetExceeded(f"token budget spent: {st['tokens']} tokens used, {self._reserved} "
                           f"reserved for calls in flight (max_total_tokens = {s.max_total_tokens})"
                           "; answers so far are cached, rerun to continue")
    st["calls"] += 1
    self._reserved += need
    if _NOT_YET_ASKED.get():  # The question's first attempt: now counted in `calls` instead.
      _NOT_YET_ASKED.set(False)
      self._outstanding -= 1
    return need

  async def _create(self, kw, json_mode: bool):
    """One HTTP attempt; with `json_mode`, `response_format` asks for the verdict schema."""
    client = self.client()
    if json_mode:
      return await client.chat.completions.create(response_format=RESPONSE_FORMAT, **kw)
    return await client.chat.completions.create(**kw)

  async def _complete(self, messages) -> Optional[str]:
    """The answer text of one question; None when it still fails after `max_retries` retries (429,
    408, 5xx, timeouts). In 'auto' mode the first question probes `response_format` alone, and
    the probe ends whatever its outcome; a refusal (400 naming it) switches to free text."""
    s = self.settings
    kw = dict(model=s.model, messages=messages, temperature=s.temperature, max_tokens=s.max_tokens)
    try:
      if self._fatal is not None:  # One call found the server unusable: no more are paid for.
        raise self._fatal
      if s.max_total_tokens and not self._tokens_per_call:  # One at a time until usage is known.
        async with self._calibration_lock:
          if self._fatal is not None:
            raise self._fatal
          return await self._complete_probed(kw)
      return await self._complete_probed(kw)
    except VLMError as e:
      self._fatal = e
      raise

  async def _complete_probed(self, kw) -> Optional[str]:
    if self._json and self.settings.json_schema == "auto" and not self._probed:
      async with self._probe_lock:
        if not self._probed:
          try:
            return await self._attempts(kw)
          finally:
            self._probed = True
    return await self._attempts(kw)

  async def _attempts(self, kw) -> Optional[str]:
    self.client()  # First: names the missing extra, if any.
    import openai
    s, failed = self.settings, 0
    while True:
      reserved, retry = self._reserve(), False
      try:
        response = await self._create(kw, json_mode=self._json)
      except openai.BadRequestError as e:
        if not (self._json and s.json_schema == "auto" and (
            "response_format" in str(e) or "json" in str(e).lower())):
          raise VLMError(f"vlm: {self._where()} refused the request (400): {str(e)[:300]}") from e
        logging.warning("vlm: %s refused response_format; asking for free text", self._where())
        self._json = False
        continue
      except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
        raise VLMError(f"vlm: {self._where()}: {type(e).__name__} ({e.status_code}): "
                       f"{str(e)[:300]}") from e  # A wrong key, model or URL: every call fails.
      except (openai.APIStatusError, openai.APIConnectionError) as e:
        status = getattr(e, "status_code", None)
        if status is not None and status not in (408, 409, 429) and status < 500:
          raise VLMError(f"vlm: {self._where()} answered {status}: {str(e)[:300]}") from e
        failed += 1
        self.stats["failed_attempts"] += 1
        self._last_error = f"{type(e).__name__}: {str(e)[:200]}"
        if failed > s.max_retries:
          if isinstance(e, openai.APIConnectionError) and not isinstance(e, openai.APITimeoutError):
            raise VLMError(f"vlm: cannot reach {self._where()} ({e}; {failed} attempts); nothing "
                           "written; is the server up and the URL right?") from e
          logging.warning("vlm: a question failed after %d attempts: %s", failed, self._last_error)
          return None
        retry = True
      except (openai.APIResponseValidationError, ValueError) as e:  # ValueError: not JSON.
        raise self._malformed(getattr(e, "body", None) or getattr(e, "doc", None) or str(e)) from e
      finally:  # Every way out of an attempt (cancellation included) gives its tokens back.
        self._reserved -= reserved
      if retry:
        await asyncio.sleep(min(s.retry_backoff_s * 2 ** (failed - 1), 30.0))
        continue
      return self._text(response)

  def _malformed(self, snippet: Any) -> VLMError:
    return VLMError(f"vlm: {self._where()} sent a reply that is not a Chat Completion: "
                    f"{str(snippet)[:200]!r}")

  def _text(self, response) -> str:
    """The answer text of a reply; `VLMError` (naming server, model, a snippet) if malformed."""
    try:
      text = response.choices[0].message.content
      usage = response.usage
      used = int(usage.total_tokens or 0) if usage is not None else 0
    except (AttributeError, IndexError, TypeError, ValueError):
      raise self._malformed(response) from None
    if text is not None and not isinstance(text, str):
      raise self._malformed(response)
    if self.settings.max_total_tokens and not used:
      raise VLMError(f"vlm: {self._where()} reports no token usage, so max_total_tokens = "
                     f"{self.settings.max_total_tokens} cannot be kept; set it to 0 and bound the "
                     "run with max_requests")
    self.stats["tokens"] += used
    self._tokens_per_call = max(self._tokens_per_call, used)
    return text or ""

  async def _answer(self, messages, key: str, semaphore, counted: bool) -> dict:
    """`{'text', 'verdict', 'cached'}`: from the cache, or asked (asked again once if the answer
    is unreadable; a question that failed after its retries is not asked again). `counted`: the
    question is in `_outstanding` until its first attempt is counted (or it is found cached)."""
    _NOT_YET_ASKED.set(counted)  # This task's own context (gather runs each in a task).
    async with semaphore:
      if self.cache is not None and (hit := self.cache.get(key)) is not None:
        if _NOT_YET_ASKED.get():
          _NOT_YET_ASKED.set(False)
          self._outstanding -= 1
        self.stats["cache_hits"] += 1
        return dict(hit, cached=True)
      texts = [await self._complete(messages)]
      if texts[0] is not None and parse_verdict(texts[0]) is None:  # Unreadable: asked once more.
        self.stats["retried"] += 1
        texts.append(await self._complete(messages))
    texts = [t or "" for t in texts]
    answer = {"text": texts[-1], "verdict": parse_verdict(texts[-1]), "attempts": texts}
    if answer["verdict"] is not None and self.cache is not None:
      self.cache.put(key, answer)
    return dict(answer, cached=False)

  def _admit(self, questions) -> list[bool]:
    """Which questions of a pair are not cached; `BudgetExceeded` (the pair not started) when
    they, with the attempts made and the questions of started pairs not yet asked, pass the
    request budget."""
    s = self.settings
    uncached = [self.cache is None or self.cache.get(k) is None for _, _, _, k in questions]
    if s.max_requests and self.stats["calls"] + self._outstanding + sum(uncached) > s.max_requests:
      raise BudgetExceeded(f"request budget spent: {self.stats['calls']} HTTP attempts"
                           f"{f', {self._outstanding} questions in flight' if self._outstanding else ''}"
                           f", this pair needs {sum(uncached)} more (max_requests = "
                           f"{s.max_requests}); answers so far are cached, rerun to continue")
    self._outstanding += sum(uncached)
    return uncached

  async def _ask_all(self, questions, uncached, semaphore) -> list[dict]:
    """Every answer of a pair; an error comes after the answers that arrived were cached."""
    answers = await asyncio.gather(*[self._answer(m, k, semaphore, u)
                                     for (_, _, m, k), u in zip(questions, uncached)],
                                   return_exceptions=True)
    for a in answers:
      if isinstance(a, BaseException):
        raise a
    return answers

  # Labels.

  def label(self, pair, video_a, video_b):
    (_, seg, glob), = self.label_stream([(pair, video_a, video_b)])
    return seg, glob

  def label_stream(self, items):
    """`(pair, segment_labels, global_label)` for each `(pair, video_a, video_b)` of `items`, in
    their order, with up to `concurrency` requests in flight across pairs: while a pair's last
    answers arrive, the next pairs' questions are already asked (at most `2 * concurrency` pairs
    ahead; a pair's videos are dropped once its frames are encoded). A pair that would pass the
    request budget is not started: the pairs already started finish and are yielded, then
    `BudgetExceeded` is raised. Any other error stops the stream after the answers that arrived
    were cached. Requests progress while the stream waits for a pair, not while the consumer
    works on one (keep per-pair work short, or raise `timeout_s`)."""
    s, loop = self.settings, self._loop
    semaphore = asyncio.Semaphore(max(1, s.concurrency))
    pending, items, refused = collections.deque(), iter(items), None
    try:
      while True:
        while refused is None and len(pending) < 2 * max(1, s.concurrency):
          item = next(items, None)
          if item is None:
            break
          questions = self.questions(*item)
          try:
            uncached = self._admit(questions)
          except BudgetExceeded as e:  # The pairs in flight are paid for: finish them first.
            refused = e
            break
          task = loop.create_task(self._ask_all(questions, uncached, semaphore))
          pending.append((item[0], questions, task))
        if not pending:
          if refused is not None:
            raise refused
          return
        pair, questions, task = pending.popleft()
        yield (pair, *self._labels(pair, questions, loop.run_until_complete(task)))
    finally:  # Stopped early (an error, the consumer gone): the pairs in flight are cancelled.
      for _, _, task in pending:
        task.cancel()
      if pending:
        loop.run_until_complete(asyncio.gather(*(t for _, _, t in pending), return_exceptions=True))
      self._outstanding = 0

  def _labels(self, pair, questions, answers) -> tuple[np.ndarray, int]:
    """A pair's labels from its answers (swap check: a question's two orders must agree)."""
    self.stats["requests"] += len(questions)
    num = len(questions) // 2
    labels, details = np.zeros((num,), np.int8), []
    for q in range(num):
      ab, ba = answers[2 * q], answers[2 * q + 1]  # Orders 'ab' then 'ba' (see questions()).
      winner_ab = {"first": 1, "second": -1, "tie": 0}.get(ab["verdict"])
      winner_ba = {"first": -1, "second": 1, "tie": 0}.get(ba["verdict"])
      failed = winner_ab is None or winner_ba is None
      self.stats["failures"] += int(winner_ab is None) + int(winner_ba is None)
      agree = not failed and winner_ab == winner_ba
      self.stats["disagreements"] += int(not failed and not agree)
      labels[q] = winner_ab if agree else 0
      details.append({"question": q, "answers": [ab["text"], ba["text"]],
                      "verdicts": [ab["verdict"], ba["verdict"]], "label": int(labels[q])})
    if self.settings.mode == "segment":
      seg, glob = labels, int(majority_vote(labels))
    else:
      glob = int(labels[0])
      seg = np.full((pair.num_segments,), glob, np.int8)
    self.stats["segments"] += len(seg)
    self.stats["tie_segments"] += int((seg == 0).sum())
    self.stats["pairs"] += 1
    self.details[pair.id] = details
    self._check_failures()
    return seg, glob

  def _check_failures(self) -> None:
    """Raises `VLMError` when failed questions pass the share allowed (half of them over the
    first `early_pairs` pairs, then `max_failure_share`): ties from a broken server are no labels."""
    s, st = self.settings, self.stats
    share = st["failures"] / max(st["requests"], 1)
    limit = max(0.5, s.max_failure_share) if st["pairs"] <= s.early_pairs else s.max_failure_share
    if st["failures"] and share > limit:
      raise VLMError(
          f"vlm: {st['failures']} of {st['requests']} questions to {self._where()} failed "
          f"({share:.0%} > {limit:.0%}; last error: {self._last_error or 'unreadable answers'}); "
          "stopping with no dataset written. Answers so far are cached: fix the server and rerun "
          "(or raise label.vlm.max_failure_share).")

  def record_metadata(self, pair_id: str) -> dict[str, Any]:
    """What a labeled record keeps of the VLM: each question's two raw answers and verdicts."""
    return {"vlm": self.details.get(pair_id, [])}

  def progress(self, done: int, total: int) -> str:
    elapsed = time.time() - self._started
    eta = elapsed / max(done, 1) * (total - done)
    s = self.stats
    return (f"vlm: {done}/{total} pairs, {s['calls']} HTTP attempts, {s['cache_hits']} cache hits, "
            f"{s['failures']} failures, {s['tokens']} tokens, ETA {eta:.0f} s")

  def count_calls(self, pair, video_a, video_b) -> tuple[int, int]:
    """`(questions, already cached)` of a pair, for a dry run (no call is made)."""
    questions = self.questions(pair, video_a, video_b)
    cached = sum(self.cache is not None and self.cache.get(k) is not None
                 for _, _, _, k in questions)
    return len(questions), cached
