"""Sampling a plain (LoRA folded in) model from exported params: previews and evaluation."""
from __future__ import annotations

import functools

import jax

from densedpo_jax.objectives import flow
from densedpo_jax.model import LoRAConfig, ModelConfig, build, pretrained


def make_video_sampler(cfg: ModelConfig, shape: tuple[int, ...], num_steps: int,
                       cfg_scale: float | None = None, shift: float | None = None):
  """Jitted `run(params, keys [N], text [N, L, D], text_mask [N, L]) -> videos [N, *shape]`.

  `params` are exported weights (`'params'` only; any adapter already merged), so the model
  runs without LoRA; `shape` is one latent `(T, H, W, C)`. Deterministic given the keys.
  """
  model = build(cfg.replace(lora=LoRAConfig()))

  @jax.jit
  def run(params, keys, text, text_mask):
    velocity_fn = functools.partial(model.apply, {"params": params})
    return flow.sample(velocity_fn, keys, tuple(shape), text, text_mask, num_steps=num_steps,
                       shift=shift or None, cfg_scale=cfg_scale)
  return run


def load_exported_params(path: str, cfg: ModelConfig):
  """Exported weights of a run (or converted pretrained weights) onto the first local device."""
  return pretrained.read_params_on_device(path, cfg)
