"""Image-to-video conditioning: what a Wan model sees besides the noisy latent, built as diffusers'
`WanImageToVideoPipeline` builds it. A record's first frame is its condition; both members of a
preference pair share it.

    concat       Wan 2.1 I2V, Wan 2.2 I2V-A14B (in_channels = 2 C + 4). Model input: the noisy
                 latent, the mask and the condition latent concatenated over channels,
                 `[x_t (C), mask (4), cond (C)]`. `cond [T', h, w, C]` is the normalised VAE
                 latent of the first frame followed by zero (mid-grey) frames; `mask [T', h, w,
                 4]` is 1 on latent frame 0 (its 4 mask channels are the 4 video frames a latent
                 frame holds, the first repeated) and 0 elsewhere. Wan 2.1 I2V also gets the first frame's CLIP
                 features (`image_emb [257, 1280]`). The whole video is generated and trained.
    first_frame  Wan 2.2 TI2V-5B. `cond [1, h, w, C]` is the normalised VAE latent of the first
                 frame alone. The input's latent frame 0 is `cond`, its noise level 0 (`t [B, T']`
                 per frame); the output's frame 0 is `cond`; frame 0 carries no loss.

`Condition` is a pytree (pass it through `jax.jit`); its `kind` is static.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("concat", "first_frame")
MASK_CHANNELS = 4  # The Wan VAE's temporal compression: one mask channel per video frame.


def kind_of(cfg, cond_frames: int | None) -> str | None:
  """The conditioning a model takes: 'concat' when its input has `2 C + 4` channels, else
  'first_frame' when the records carry a one-frame condition (`cond_frames == 1`), else None
  (text-to-video). `cond_frames`: latent frames of the records' `cond_latent`, or None."""
  c = cfg.latent_channels
  if cfg.in_channels == 2 * c + MASK_CHANNELS:
    return "concat"
  if cfg.in_channels != c:
    raise ValueError(f"model: in_channels={cfg.in_channels} with {c} latent channels is neither "
                     f"text-to-video ({c}) nor image-to-video ({2 * c + MASK_CHANNELS})")
  return "first_frame" if cond_frames == 1 else None


def first_frame_mask(shape: tuple[int, int, int], dtype=jnp.float32) -> jax.Array:
  """The concat kind's mask `[T', h, w, 4]`: 1 on latent frame 0, 0 elsewhere."""
  t, h, w = shape
  return jnp.zeros((t, h, w, MASK_CHANNELS), dtype).at[0].set(1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Condition:
  """A batch's condition: `latent [B, T' or 1, h, w, C]`, `image_emb [B, N, D]` or None."""
  latent: jax.Array
  image_emb: Any = None
  kind: str = dataclasses.field(default="concat", metadata=dict(static=True))

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Condition.kind={self.kind!r}; expected one of {KINDS}")

  def repeat(self, n: int) -> "Condition":
    """The condition of a batch `n` times as long (`[a; b]` pairs, CFG's two halves)."""
    tile = lambda a: None if a is None else jnp.concatenate([a] * n, axis=0)
    return Condition(tile(self.latent), tile(self.image_emb), self.kind)


def _matched(cond: Condition, b: int) -> Condition:
  have = cond.latent.shape[0]
  if b == have:
    return cond
  if b % have:
    raise ValueError(f"condition of batch {have} for a model batch of {b}")
  return cond.repeat(b // have)


def model_inputs(cond: Condition, x: jax.Array, t: jax.Array
                 ) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
  """`(x_in, t_in, kwargs)` for the model: `x [B, T', h, w, C]`, `t [B]`."""
  cond = _matched(cond, x.shape[0])
  latent = cond.latent.astype(x.dtype)
  kwargs = {} if cond.image_emb is None else {"image_emb": cond.image_emb}
  if cond.kind == "concat":
    if latent.shape != x.shape:
      raise ValueError(f"cond_latent has shape {latent.shape[1:]} per video; the latent is "
                       f"{x.shape[1:]} (the concat condition covers every latent frame)")
    mask = jnp.broadcast_to(first_frame_mask(x.shape[1:4], x.dtype), x.shape[:4] + (MASK_CHANNELS,))
    return jnp.concatenate([x, mask, latent], axis=-1), t, kwargs
  if latent.shape[1] != 1 or latent.shape[2:] != x.shape[2:]:
    raise ValueError(f"cond_latent has shape {latent.shape[1:]} per video; expected one latent "
                     f"frame of the latent's size {(1,) + x.shape[2:]}")
  levels = jnp.broadcast_to(t.reshape(-1, 1), (x.shape[0], x.shape[1])).at[:, 0].set(0.0)
  return x.at[:, :1].set(latent), levels, kwargs


def conditioned(velocity_fn: Callable, cond: Condition | None) -> Callable:
  """`velocity_fn` (`(x, t, text, text_mask, null_text, **kw) -> v`) with `cond` put into each
  call; unchanged when `cond` is None. A batch that is a multiple of the condition's (CFG's
  halves, pairs) gets it repeated."""
  if cond is None:
    return velocity_fn

  def velocity(x, t, text, text_mask, null_text=None):
    x_in, t_in, kwargs = model_inputs(cond, x, t)
    return velocity_fn(x_in, t_in, text, text_mask, null_text, **kwargs)
  return velocity


def finish(cond: Condition | None, x: jax.Array) -> jax.Array:
  """A sampled latent as the pipeline returns it: first_frame's frame 0 is the condition."""
  if cond is None or cond.kind != "first_frame":
    return x
  return x.at[:, :1].set(_matched(cond, x.shape[0]).latent.astype(x.dtype))


def trained_frames(cond: Condition | None) -> slice:
  """The latent frames that carry loss: all, or from frame 1 for first_frame."""
  return slice(1, None) if cond is not None and cond.kind == "first_frame" else slice(None)


def from_batch(batch: dict[str, Any], kind: str | None) -> Condition | None:
  """The `Condition` of a data batch (`cond_latent`, optional `image_emb`), or None for
  text-to-video; a model that needs one and a batch without it is an error naming the field."""
  if kind is None:
    return None
  if "cond_latent" not in batch:
    raise ValueError(f"the model is image-to-video ({kind}), but the batch has no 'cond_latent' "
                     "(encode the videos with --condition=first_frame)")
  return Condition(batch["cond_latent"], batch.get("image_emb"), kind)


def from_records(records, cfg, repeat: int = 1) -> Condition | None:
  """The `Condition` of a list of records (each `repeat` times in a row: seeds of one prompt) for
  the model of `cfg`, or None for text-to-video. A record without the condition the model needs
  is an error naming it."""
  first = records[0].cond_latent
  kind = kind_of(cfg, None if first is None else first.shape[0])
  if kind is None:
    return None
  missing = [r.id for r in records if r.cond_latent is None]
  if missing:
    raise ValueError(f"the model is image-to-video ({kind}); record(s) {missing[:3]} have no "
                     "cond_latent (encode the videos with --condition=first_frame)")
  stack = lambda field: np.repeat(np.stack([np.asarray(getattr(r, field), np.float32)
                                            for r in records]), repeat, axis=0)
  uses_image = getattr(cfg, "image_dim", 0) > 0
  if uses_image and records[0].image_emb is None:
    raise ValueError(f"the model attends to CLIP image features (image_dim {cfg.image_dim}); "
                     f"record {records[0].id!r} has no image_emb (encode with a Wan 2.1 I2V folder, "
                     "which has an image_encoder/)")
  image = stack("image_emb") if uses_image else None
  return Condition(stack("cond_latent"), image, kind)
