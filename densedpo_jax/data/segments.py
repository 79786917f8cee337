"""Segment labels (pixel time) <-> latent-frame labels (docs/training.md, Data).

Videos are labeled per segment of `frames_per_segment` pixel frames. A video autoencoder with
temporal factor r maps `num_frames` pixel frames to T' latent frames:

  causal (MAGVIT-v2 / CogVideoX): T' = 1 + (num_frames - 1) / r; latent 0 covers pixel frame 0,
    latent j >= 1 covers pixel frames r(j-1)+1 .. rj.
  non-causal: T' = num_frames / r; latent j covers pixel frames rj .. rj+r-1.

r = 1 (pixel space) is the identity either way. A latent frame takes label s when every pixel frame
it covers lies in segments labeled s, and 0 (tie) otherwise.

With S segment labels, pixel frame f lies in segment `min(f // frames_per_segment, S - 1)`, so
either S = ceil(num_frames / frames_per_segment) (a short last segment) or
S = floor(num_frames / frames_per_segment) (leftover frames join the last segment) works.

Functions accept NumPy (for the data pipeline) or JAX arrays (also traced) and return the same kind.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


def num_latent_frames(num_frames, temporal_factor, causal=True):
  """T', the number of latent frames of a `num_frames` video; ValueError when it does not divide."""
  r = temporal_factor
  if r < 1 or num_frames < 1:
    raise ValueError(f"temporal_factor and num_frames must be >= 1, got {r} and {num_frames}")
  if causal:
    if (num_frames - 1) % r:
      raise ValueError(f"causal autoencoder with temporal_factor={r} needs num_frames = 1 + k*{r}, "
                       f"got num_frames={num_frames}")
    return 1 + (num_frames - 1) // r
  if num_frames % r:
    raise ValueError(f"non-causal autoencoder with temporal_factor={r} needs num_frames divisible "
                     f"by {r}, got num_frames={num_frames}")
  return num_frames // r


def latent_frame_coverage(num_frames, temporal_factor, causal=True):
  """Pixel frames each latent frame covers: `(first [T'], last [T'])` inclusive, NumPy ints."""
  t = num_latent_frames(num_frames, temporal_factor, causal)
  j, r = np.arange(t), temporal_factor
  if causal:
    first = np.maximum(r * (j - 1) + 1, 0)
    return first, r * j
  return r * j, r * j + r - 1


def pixel_to_latent_index(num_frames, temporal_factor, causal=True):
  """The latent frame holding each pixel frame: NumPy ints `[num_frames]`."""
  num_latent_frames(num_frames, temporal_factor, causal)  # validates
  f = np.arange(num_frames)
  if causal:
    return (f + temporal_factor - 1) // temporal_factor
  return f // temporal_factor


def latent_to_pixel(latent_values, num_frames, temporal_factor, causal=True):
  """Inverse view for previews: `[..., T']` -> `[..., num_frames]`, each pixel frame its latent's."""
  values = _xp(latent_values).asarray(latent_values)
  t = num_latent_frames(num_frames, temporal_factor, causal)
  if values.ndim < 1 or values.shape[-1] != t:
    raise ValueError(f"latent_values must have T'={t} on the last axis, got {values.shape}")
  return values[..., pixel_to_latent_index(num_frames, temporal_factor, causal)]


def default_num_segments(num_frames, frames_per_segment):
  """Default S = ceil(num_frames / frames_per_segment) (a short last segment)."""
  return -(-num_frames // frames_per_segment)


def check_num_segments(num_frames, frames_per_segment, num_segments):
  """ValueError unless S is the ceil or the floor of `num_frames / frames_per_segment`."""
  fps, s = frames_per_segment, num_segments
  if fps < 1 or s < 1:
    raise ValueError(f"frames_per_segment and the number of segments must be >= 1, got {fps} "
                     f"and {s}")
  if not (s - 1) * fps < num_frames < (s + 1) * fps:
    raise ValueError(f"{s} segments of {fps} frames do not fit num_frames={num_frames}: expected "
                     f"ceil or floor of num_frames / frames_per_segment segments")


@functools.lru_cache(maxsize=256)
def _segment_cover(num_frames, frames_per_segment, temporal_factor, causal, num_segments):
  """Static bool `[T', S]` (read-only, cached): does latent frame j cover a pixel frame of segment k."""
  fps, s = frames_per_segment, num_segments
  check_num_segments(num_frames, fps, s)
  segment = np.minimum(np.arange(num_frames) // fps, s - 1)
  latent = pixel_to_latent_index(num_frames, temporal_factor, causal)
  cover = np.zeros((num_latent_frames(num_frames, temporal_factor, causal), s), bool)
  cover[latent, segment] = True
  cover.flags.writeable = False
  return cover


def latent_frame_labels(segment_labels, num_frames, frames_per_segment, temporal_factor,
                        causal=True):
  """Segment labels `[..., S]` in {+1, -1, 0} -> latent-frame labels `[..., T']`.

  A latent frame straddling segments with different labels becomes a tie (0). Batched over any
  leading dims.
  """
  xp = _xp(segment_labels)
  labels = xp.asarray(segment_labels)
  cover = _segment_cover(num_frames, frames_per_segment, temporal_factor, causal,
                         labels.shape[-1])
  l = labels[..., None, :]  # [..., 1, S] against cover [T', S]
  all_pos = xp.all(xp.where(cover, l == 1, True), axis=-1)
  all_neg = xp.all(xp.where(cover, l == -1, True), axis=-1)
  return xp.where(all_pos, 1, xp.where(all_neg, -1, 0)).astype(labels.dtype)


def latent_segment_ids(num_frames, frames_per_segment, temporal_factor, causal=True,
                       num_segments=None):
  """The segment of each latent frame, -1 when it straddles two: NumPy ints `[T']`.

  For `dense_dpo_loss(..., granularity='segment', segment_ids=...)` (broadcast to `[B, T']`).
  `num_segments` defaults to `ceil(num_frames / frames_per_segment)`.
  """
  if num_segments is None:
    num_segments = default_num_segments(num_frames, frames_per_segment)
  cover = _segment_cover(num_frames, frames_per_segment, temporal_factor, causal, num_segments)
  return np.where(cover.sum(-1) == 1, cover.argmax(-1), -1)


def nontie_fraction(labels, axis=-1):
  """Share of non-zero labels along `axis`: `[..., S]` -> `[...]` float."""
  xp = _xp(labels)
  return xp.mean(xp.asarray(labels) != 0, axis=axis)


def keep_pair(segment_labels, min_nontie_frac=0.2):
  """Data filter: keep a pair when more than `min_nontie_frac` of its segments are non-tie
  (paper: 20%). `[..., S]` -> bool `[...]`."""
  return nontie_fraction(segment_labels) > min_nontie_frac


__all__ = ["num_latent_frames", "latent_frame_coverage", "pixel_to_latent_index",
           "latent_to_pixel", "default_num_segments", "check_num_segments", "latent_frame_labels", "latent_segment_ids", "nontie_fraction",
           "keep_pair"]
