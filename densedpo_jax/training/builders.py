"""Config -> model and data source, and overridden copies of a config: the pieces every task
builds (train, pairs, evaluate, ...).

`config.model.family` picks the model family ('dit': VideoDiT, 'wan': Wan 2.1); `config.model.preset`
a size within it; any other non-None `config.model.*` field overrides the preset.
"""
from __future__ import annotations

import ml_collections
from absl import logging

from densedpo_jax.model.attention import check_platform
from densedpo_jax.model import LoRAConfig, ModelConfig, experts, get_model_config, pretrained


def model_config(config: ml_collections.ConfigDict, portable_attention: bool = True) -> ModelConfig:
  """The model config of a run: `config.model` (family, preset, overrides) and `config.lora`.
  When `config.init_from` names weights that carry their config (a diffusers folder, a converted
  params directory, a run), the shape (width, depth, heads, channels, ...) is theirs and the
  preset only names the run's defaults (dtype, layout, attention); a shape override that
  disagrees with the weights is an error naming both.

  An attention kernel this machine lacks (cuDNN off a GPU, splash off a TPU: the shipped configs
  name the accelerator's) becomes 'blockwise', the portable flash-style attention, with one
  warning line, unless `portable_attention` is False (the planner plans the named kernel).

  A field the family does not have (e.g. `ffn_dim` for 'dit') is an error naming it.
  """
  fields = config.model.to_dict()
  family, preset = fields.pop("family", "dit"), fields.pop("preset")
  overrides = {k: v for k, v in fields.items() if v is not None}
  if "patch_size" in overrides:
    overrides["patch_size"] = tuple(overrides["patch_size"])
  lora = LoRAConfig(rank=config.lora.rank, alpha=config.lora.alpha,
                    targets=tuple(config.lora.targets))
  cfg = get_model_config(family, preset, lora=lora, **overrides)
  init_from = config.get("init_from")
  cfg = pretrained.with_weights_shape(cfg, init_from, overrides) if init_from else cfg
  if cfg.lora.rank > cfg.width:
    logging.warning("config.lora.rank=%d is above the model width %d: an update's rank cannot "
                    "exceed its smaller dimension, so the extra rank only costs memory",
                    cfg.lora.rank, cfg.width)
  if portable_attention:
    try:
      check_platform(cfg.attention_impl)
    except ValueError as e:
      logging.warning("%s; using 'blockwise' instead", str(e).split(":")[0])
      cfg = cfg.replace(attention_impl="blockwise")
  return cfg


def training_weights(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with `init_from` resolved to the transformer folder a training run reads (a pipeline
  folder's `transformer/`; with `config.expert`, that expert's of a two-expert pipeline, the
  high-noise one for 'both', which reads the other beside it) and, for one expert,
  `t_sampler.range` set to the noise levels that expert runs at. A range set by hand that is not
  inside the expert's is an error naming both."""
  init_from, expert = config.get("init_from"), config.get("expert", "")
  folder = experts.weights_folder(init_from, expert)
  if not expert:
    return with_overrides(config, init_from=folder) if folder != init_from else config
  lo, hi = experts.t_range(experts.read_pipeline(init_from), expert)
  want = tuple(float(v) for v in config.t_sampler.range)
  if want != (0.0, 1.0) and not lo <= want[0] < want[1] <= hi:
    raise ValueError(f"config.t_sampler.range={want}, but the {expert!r} expert of {init_from} "
                     f"runs at t in [{lo}, {hi}): leave the range unset or keep it inside")
  t_range = want if want != (0.0, 1.0) else (lo, hi)
  if expert == experts.BOTH:
    if want != (0.0, 1.0):
      raise ValueError(f"config.t_sampler.range={want} with config.expert='both': both experts "
                       "draw their own ranges; set config.t_sampler.high_share instead")
    boundary = experts.read_pipeline(init_from).boundary_ratio
    logging.info("Adapting both experts of %s: %.0f%% of the pairs at t >= %.4g (high-noise "
                 "expert), the rest below, each on its expert", init_from,
                 100 * config.t_sampler.high_share, boundary)
    return with_overrides(config, init_from=folder, **{"t_sampler.boundary": boundary})
  logging.info("Adapting the %s-noise expert %s: t in [%.4g, %.4g)", expert, folder, *t_range)
  return with_overrides(config, init_from=folder, **{"t_sampler.range": t_range})


def make_source(data: ml_collections.ConfigDict):
  """The random-access record source named by `config.data`."""
  from densedpo_jax.data import arrayrecord_io, tfds_builder  # The data stack, only when read.
  if data.kind == "shapesworld":
    return tfds_builder.shapesworld_source(data.split, data_dir=data.path or None)
  if data.kind in ("pairs", "videos"):
    return arrayrecord_io.ShardedSource(data.path, data.name,
                                        max_unreadable_share=data.max_unreadable_share)
  raise ValueError(f"config.data.kind={data.kind!r}; expected 'pairs', 'videos' or 'shapesworld'")


def with_overrides(config: ml_collections.ConfigDict, **updates) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted keys (`'data.path'`) replaced; unknown keys are an error."""
  c = config.copy_and_resolve_references()
  for key, value in updates.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c
