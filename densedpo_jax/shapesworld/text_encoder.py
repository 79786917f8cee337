"""A small deterministic text encoder standing in for T5 (no weights, no downloads).

Each word gets a fixed pseudo-random embedding seeded by a hash of the word, so
any prompt (even one with unseen words) encodes the same way on every machine
and run. A sinusoidal position signal is added so word order matters
("moves up and to the right" differs from "moves to the right and up"). Like T5
the output is one vector a token plus an end-of-sequence token, padded to a
fixed length, with a boolean mask marking real tokens.

    enc = HashTextEncoder(max_len=16, dim=64)
    emb, mask = enc("a red circle moves to the right")   # [16, 64] f32, [16] bool
    embs, masks = enc.encode_batch(prompts)              # [B, 16, 64], [B, 16]

Padded positions are exactly zero. The empty prompt encodes to the lone
end-of-sequence token (a natural "null" text for classifier-free guidance).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from typing import Sequence

import numpy as np

EOS = "</s>"
_TOKEN_RE = re.compile(r"[a-z0-9]+")


def tokenize(prompt: str) -> list[str]:
  """Lower-cased alphanumeric words, then the end-of-sequence token."""
  return _TOKEN_RE.findall(prompt.lower()) + [EOS]


@functools.lru_cache(maxsize=4096)
def _word_vector(word: str, dim: int, seed: int) -> np.ndarray:
  digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
  rng = np.random.default_rng([int.from_bytes(digest, "little"), seed])
  v = rng.standard_normal(dim)
  v /= np.sqrt(np.mean(v * v))  # unit RMS, like a layer-normalised encoder output
  v.setflags(write=False)
  return v


def _positions(max_len: int, dim: int) -> np.ndarray:
  pos = np.arange(max_len)[:, None]
  i = np.arange(dim // 2)[None, :]
  angle = pos / (10000.0 ** (2.0 * i / dim))
  out = np.zeros((max_len, dim))
  out[:, 0:2 * (dim // 2):2] = np.sin(angle)
  out[:, 1:2 * (dim // 2):2] = np.cos(angle)
  return out


@dataclasses.dataclass(frozen=True)
class HashTextEncoder:
  """Deterministic hash-embedding text encoder.

  Attributes:
    max_len: L, tokens an output (longer prompts are truncated; EOS is kept last).
    dim: D, embedding width.
    seed: changes every word vector (a different "pretrained" encoder).
    position_scale: weight of the sinusoidal position signal.
  """
  max_len: int = 16
  dim: int = 64
  seed: int = 0
  position_scale: float = 0.5

  def __post_init__(self):
    if self.max_len < 1 or self.dim < 2:
      raise ValueError(f"HashTextEncoder needs max_len >= 1 and dim >= 2, got {self}")

  def __call__(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """Encodes one prompt.

    Returns:
      emb: float32 `[L, D]`, zero where `mask` is False.
      mask: bool `[L]`, True on the prompt's tokens (including EOS).
    """
    tokens = tokenize(prompt)
    if len(tokens) > self.max_len:
      tokens = tokens[:self.max_len - 1] + [EOS]
    n = len(tokens)
    emb = np.zeros((self.max_len, self.dim), np.float32)
    vecs = np.stack([_word_vector(t, self.dim, self.seed) for t in tokens])
    emb[:n] = vecs + self.position_scale * _positions(self.max_len, self.dim)[:n]
    mask = np.zeros((self.max_len,), bool)
    mask[:n] = True
    return emb, mask

  def encode_batch(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encodes prompts: float32 `[B, L, D]` embeddings and bool `[B, L]` masks."""
    pairs = [self(p) for p in prompts]
    if not pairs:
      return (np.zeros((0, self.max_len, self.dim), np.float32), np.zeros((0, self.max_len), bool))
    return np.stack([e for e, _ in pairs]), np.stack([m for _, m in pairs])
