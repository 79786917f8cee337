"""The model family switch: a config picks its module, and configs round-trip through JSON.

    build(cfg)                  VideoDiT for a DiTConfig, WanTransformer for a WanConfig
    config_to_dict / _from_dict {'family': 'dit' | 'wan', 'config': {field: value}} (model.json)
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from densedpo_jax.model.config import FAMILIES, LoRAConfig, ModelConfig, family_of


def build(cfg: ModelConfig) -> nn.Module:
  """The Flax module of `cfg`: same call for every family, `(x, t, text, text_mask, ...)`."""
  if family_of(cfg) == "wan":
    from densedpo_jax.model.wan import WanTransformer
    return WanTransformer(cfg)
  from densedpo_jax.model.dit import VideoDiT
  return VideoDiT(cfg)


def abstract_variables(cfg: ModelConfig) -> dict[str, Any]:
  """`jax.ShapeDtypeStruct` trees (boxed, with logical axes) of every variable collection of
  `build(cfg)` (`'params'`, and `'lora'` when `cfg.lora.rank > 0`), allocating nothing."""
  pt, ph, pw = cfg.patch_size
  x = jnp.zeros((1, pt, ph, pw, cfg.in_channels))
  text = jnp.zeros((1, 1, cfg.text_dim))
  cfg = cfg.replace(attention_impl="xla")  # Same variables; traceable on any backend.
  return jax.eval_shape(lambda: build(cfg).init(jax.random.key(0), x, jnp.zeros((1,)), text,
                                                jnp.ones((1, 1), bool)))


def abstract_params(cfg: ModelConfig) -> Any:
  """`jax.ShapeDtypeStruct` tree of the (boxed) `'params'` of `build(cfg)`, allocating nothing."""
  return abstract_variables(cfg)["params"]


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
  """JSON-able `{'family', 'config'}` (LoRA settings included)."""
  fields = dataclasses.asdict(cfg)
  fields["patch_size"] = list(fields["patch_size"])
  fields["lora"]["targets"] = list(fields["lora"]["targets"])
  return {"family": family_of(cfg), "config": fields}


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
  """Inverse of `config_to_dict`; unknown families or fields are errors naming them."""
  family = d.get("family")
  if family not in FAMILIES:
    raise ValueError(f"model config: family {family!r}; expected one of {sorted(FAMILIES)}")
  cls = FAMILIES[family][0]
  fields = dict(d.get("config", {}))
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = set(fields) - known
  if unknown:
    raise ValueError(f"model config: unknown {cls.__name__} field(s) {sorted(unknown)}")
  if "patch_size" in fields:
    fields["patch_size"] = tuple(fields["patch_size"])
  if "lora" in fields:
    lora = dict(fields["lora"])
    lora["targets"] = tuple(lora.get("targets", LoRAConfig().targets))
    fields["lora"] = LoRAConfig(**lora)
  return cls(**fields)
