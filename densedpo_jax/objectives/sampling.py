"""Sampling a plain (LoRA folded in) model from exported params: previews, pairs and evaluation.

The params are one tree, or `experts.ExpertParams` for a two-expert (Wan 2.2 A14B) pipeline,
whose steps each run the expert of their noise level.
"""
from __future__ import annotations

import functools

import jax

from densedpo_jax.objectives import flow
from densedpo_jax.model import LoRAConfig, ModelConfig, build, conditioning, experts, pretrained


def velocity_fn(model, params):
  """`(x, t, text, text_mask, null_text) -> v` of `model` with `params` (one tree, or both
  experts routed by the noise level)."""
  if isinstance(params, experts.ExpertParams):
    bind = lambda p: functools.partial(model.apply, {"params": p})
    return experts.routed_velocity(bind(params.high), bind(params.low), params.boundary_ratio)
  return functools.partial(model.apply, {"params": params})


def make_video_sampler(cfg: ModelConfig, shape: tuple[int, ...], num_steps: int,
                       cfg_scale: float | None = None, shift: float | None = None):
  """Jitted `run(params, keys [N], text [N, L, D], text_mask [N, L], cond=None) -> videos
  [N, *shape]`.

  `params` are exported weights (`'params'` only; any adapter already merged), so the model
  runs without LoRA; `shape` is one latent `(T, H, W, C)`; `cond` an image-to-video model's
  `conditioning.Condition` of the N videos. Deterministic given the keys.
  """
  model = build(cfg.replace(lora=LoRAConfig()))

  @jax.jit
  def run(params, keys, text, text_mask, cond=None):
    velocity = conditioning.conditioned(velocity_fn(model, params), cond)
    out = flow.sample(velocity, keys, tuple(shape), text, text_mask, num_steps=num_steps,
                      shift=shift or None, cfg_scale=cfg_scale)
    return conditioning.finish(cond, out)
  return run


def load_exported_params(path: str, cfg: ModelConfig):
  """Exported weights of a run, converted pretrained weights, a transformer folder or a pipeline
  folder onto the first local device; both experts (`experts.ExpertParams`) of a two-expert
  pipeline, of `HIGH_RUN+LOW_RUN` (the runs that adapted them one a run), or of a run that
  adapted both."""
  pair = experts.run_pair(path)
  if pair is not None:
    high, low = (pretrained.read_params_on_device(p, cfg) for p in pair[:2])
    boundary = pair[2]
    return experts.ExpertParams(high, low, boundary)
  boundary = experts.both_run_boundary(path)
  if boundary is not None:  # A run that adapted both experts: its params nest per expert.
    both = pretrained.read_params_on_device(path, cfg, two_experts=True)
    return experts.ExpertParams(both["high"], both["low"], boundary)
  pipeline = experts.read_pipeline(path)
  if pipeline is None:
    return pretrained.read_params_on_device(path, cfg)
  read = lambda name: pretrained.read_params_on_device(pipeline.transformers[name], cfg)
  if pipeline.two_experts:
    return experts.ExpertParams(read("high"), read("low"), pipeline.boundary_ratio)
  return read("high")
