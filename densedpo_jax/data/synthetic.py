"""Random but valid records, for tests, benchmarks and smoke runs of later stages.

    rec = random_pair(np.random.default_rng(0), "p0", latent_shape=(16, 16, 16, 3))
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from densedpo_jax.data import segments
from densedpo_jax.data import schema


def random_video(rng: np.random.Generator, id: str, latent_shape: Sequence[int] = (16, 16, 16, 3),  # pylint: disable=redefined-builtin
                 text_shape: Sequence[int] = (16, 64), temporal_factor: int = 1, causal: bool = True,
                 fps: float = 8.0, latent_dtype: str = "float32") -> schema.VideoRecord:
  """A VideoRecord of standard-normal latents; num_frames follows from T' and the autoencoder."""
  t = latent_shape[0]
  num_frames = 1 + (t - 1) * temporal_factor if causal else t * temporal_factor
  emb, mask = _text(rng, text_shape)
  latent = rng.standard_normal(latent_shape).astype(np.float32)
  return schema.VideoRecord(id=id, prompt=f"prompt {id}", text_emb=emb, text_mask=mask,
                            latent=latent.astype(schema.LATENT_DTYPES[latent_dtype]),
                            num_frames=num_frames, fps=fps, temporal_factor=temporal_factor,
                            causal=causal, latent_dtype=latent_dtype)


def _text(rng, text_shape):
  emb = rng.standard_normal(text_shape).astype(np.float32)
  mask = np.zeros(text_shape[0], bool)
  mask[:int(rng.integers(1, text_shape[0] + 1))] = True
  return emb * mask[:, None], mask


def random_pair(rng: np.random.Generator, id: str, latent_shape: Sequence[int] = (16, 16, 16, 3),  # pylint: disable=redefined-builtin
                text_shape: Sequence[int] = (16, 64), frames_per_segment: int = 4, temporal_factor: int = 1,
                causal: bool = True, fps: float = 8.0, latent_dtype: str = "float32", labeled: bool = True,
                source: Optional[str] = None, tie_prob: float = 0.4) -> schema.PairRecord:
  """A PairRecord with random latents and (if `labeled`) random segment and global labels.

  Each segment is a tie with probability `tie_prob`, else +1 or -1 evenly; the
  global label is the sign of the segment sum.
  """
  t = latent_shape[0]
  num_frames = 1 + (t - 1) * temporal_factor if causal else t * temporal_factor
  segments.num_latent_frames(num_frames, temporal_factor, causal)
  s = segments.default_num_segments(num_frames, frames_per_segment)
  source = source or ("guided" if rng.random() < 0.5 else "vanilla")
  emb, mask = _text(rng, text_shape)
  cast = lambda x: x.astype(schema.LATENT_DTYPES[latent_dtype])  # pylint: disable=unnecessary-lambda-assignment
  seg = glob = None
  if labeled:
    seg = np.where(rng.random(s) < tie_prob, 0, rng.choice([-1, 1], s)).astype(np.int8)
    glob = int(np.sign(seg.sum()))
  return schema.PairRecord(
      id=id, prompt=f"prompt {id}", text_emb=emb, text_mask=mask,
      latent_a=cast(rng.standard_normal(latent_shape).astype(np.float32)),
      latent_b=cast(rng.standard_normal(latent_shape).astype(np.float32)),
      num_frames=num_frames, fps=fps, frames_per_segment=frames_per_segment, source=source,
      eta=float(rng.uniform(0.2, 0.8)) if source == "guided" else math.nan,
      seed_a=int(rng.integers(2**31)), seed_b=int(rng.integers(2**31)),
      temporal_factor=temporal_factor, causal=causal, segment_labels=seg, global_label=glob,
      gt_video_id=f"gt-{id}" if source == "guided" else None,
      labeler="random" if labeled else None, labeler_params={"tie_prob": tie_prob} if labeled else {},
      latent_dtype=latent_dtype)
