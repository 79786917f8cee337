"""Sampling a plain (LoRA folded in) VideoDiT from exported params: previews and evaluation."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from densedpo_jax import checkpointing, flow
from densedpo_jax.model import DiTConfig, LoRAConfig, VideoDiT


def make_video_sampler(cfg: DiTConfig, shape: tuple[int, ...], num_steps: int,
                       cfg_scale: float | None = None, shift: float | None = None):
  """Jitted `run(params, keys [N], text [N, L, D], text_mask [N, L]) -> videos [N, *shape]`.

  `params` are exported weights (`'params'` only; any adapter already merged), so the model
  runs without LoRA; `shape` is one latent `(T, H, W, C)`. Deterministic given the keys.
  """
  model = VideoDiT(cfg.replace(lora=LoRAConfig()))

  @jax.jit
  def run(params, keys, text, text_mask):
    velocity_fn = functools.partial(model.apply, {"params": params})
    return flow.sample(velocity_fn, keys, tuple(shape), text, text_mask, num_steps=num_steps,
                       shift=shift or None, cfg_scale=cfg_scale)
  return run


def load_exported_params(path: str, cfg: DiTConfig, latent_shape, text_shape):
  """Exported weights of a run (`checkpointing.load_params`) onto the first local device.

  `latent_shape` `(T, H, W, C)` and `text_shape` `(L, D)` only serve to trace the model's init.
  """
  model = VideoDiT(cfg.replace(lora=LoRAConfig()))
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1,) + tuple(latent_shape)), jnp.zeros((1,)),
      jnp.zeros((1,) + tuple(text_shape)), jnp.ones((1, text_shape[0]), bool)))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                  nn.unbox(shapes["params"]))
  return checkpointing.load_params(path, target)
