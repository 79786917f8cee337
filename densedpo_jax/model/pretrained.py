"""Pretrained weights on disk: the project's params directories, and diffusers folders.

A params directory holds `checkpoints/<step>/params`, the Orbax item that every run's checkpoint
has (`training/checkpointing.py`), and a `model.json` naming the model config (written by runs
and by `python -m densedpo_jax.convert`). `config.init_from` and `load_pretrained` accept a
run's workdir, its `checkpoints` folder, one step folder, or a diffusers `transformer/` folder;
the last is converted on the fly by `model/wan_weights.py`, which reads safetensors and needs no
torch.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from absl import logging

from densedpo_jax import distributed
from densedpo_jax.model.config import LoRAConfig, ModelConfig, family_of
from densedpo_jax.model import experts, wan_weights
from densedpo_jax.model.layout import stack_blocks, unstack_blocks
from densedpo_jax.model.registry import (abstract_params, build, config_from_dict,
                                         config_to_dict)

MODEL_JSON = "model.json"
# Fields a run chooses whatever weights it starts from; every other field is the weights' shape.
RUN_FIELDS = ("attention_impl", "dtype", "param_dtype", "remat_policy", "scan_layers",
              "text_dropout", "text_len", "cross_attn_mask", "lora")


def is_diffusers_folder(path) -> bool:
  """A diffusers model folder: `config.json` beside one or more `*.safetensors` files."""
  path = distributed.path(path)
  return (path.is_dir() and (path / "config.json").is_file()
          and any(f.name.endswith(".safetensors") for f in path.iterdir()))


def _place(params: Any, target: Any, source: str) -> Any:
  """Numpy `params` onto the shapes, dtypes and shardings of `target` (ShapeDtypeStruct tree)."""
  flat, want = traverse_util.flatten_dict(params), traverse_util.flatten_dict(target)
  if set(flat) != set(want):
    missing = sorted("/".join(k) for k in set(want) - set(flat))
    extra = sorted("/".join(k) for k in set(flat) - set(want))
    raise ValueError(f"{source}: parameters do not match the model: missing {missing[:5]}, "
                     f"unexpected {extra[:5]}")
  out = {}
  for k, spec in want.items():
    if tuple(flat[k].shape) != tuple(spec.shape):
      raise ValueError(f"{source}: {'/'.join(k)} has shape {tuple(flat[k].shape)}; the model "
                       f"expects {tuple(spec.shape)}")
    value = np.asarray(flat[k]).astype(spec.dtype)
    sharding = getattr(spec, "sharding", None)
    out[k] = jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)
  return traverse_util.unflatten_dict(out)


def _checkpoint_dir(path) -> tuple[epath.Path, int | None]:
  """`(checkpoints folder, step or None)` of a workdir, checkpoints folder or step folder."""
  path = distributed.path(path)
  if (path / "params").is_dir() and path.name.isdigit():
    return path.parent, int(path.name)
  if (path / "checkpoints").is_dir():
    return path / "checkpoints", None
  return path, None


def read_params(path: str, target: Any, cfg: ModelConfig | None = None,
                step: int | None = None) -> Any:
  """Reads pretrained params onto the shapes, dtypes and shardings of `target`.

  Args:
    path: a run's workdir, its `checkpoints` folder, one step folder (`.../checkpoints/1200`),
      or a diffusers folder (needs `cfg`, the model the weights are converted for).
    target: `jax.ShapeDtypeStruct` tree (with shardings) of the expected params.
    cfg: the model config, for diffusers folders (layout and family).
    step: which checkpoint step; default the latest.
  """
  if is_diffusers_folder(path):
    if cfg is None:
      raise ValueError(f"init_from: {path} is a diffusers folder; a model config is needed to "
                       "convert it")
    return _place(wan_weights.load_diffusers(path, cfg), target, path)
  directory, found_step = _checkpoint_dir(path)
  step = found_step if step is None else step
  if not directory.is_dir():
    raise FileNotFoundError(f"init_from: no checkpoint directory at {directory}")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True, create=False, save_interval_steps=0),
                                  item_handlers={"params": ocp.StandardCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  try:
    if step is None or step not in manager.all_steps():
      raise FileNotFoundError(f"init_from: no checkpoint step {step} under {directory} "
                              f"(found steps {list(manager.all_steps())})")
    stored = manager.item_metadata(step)["params"]
    if stored is not None and _scanned(stored) != _scanned(target):
      return _relayout(manager, step, stored, target, f"{directory}/{step}")
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target)))
  except (ValueError, KeyError) as e:
    raise ValueError(f"init_from: the params in {directory}/{step} do not match the model config "
                     f"(different family, preset, patch size or scan_layers?): {e}") from e
  finally:
    manager.close()
  return restored["params"]


def weights_config(path: str) -> ModelConfig | None:
  """The model config stored with the weights at `path`: a diffusers folder's `config.json`, a
  pipeline folder's transformer (both experts of an A14B pipeline, which must agree), the
  `model.json` of a params directory or run (of the first of `HIGH_RUN+LOW_RUN`); None when
  `path` holds none of them."""
  pair = experts.run_pair(path)
  if pair is not None:  # HIGH_RUN+LOW_RUN: the adapted experts of one pipeline.
    return read_model_json(pair[0])
  pipeline = experts.read_pipeline(path)
  if pipeline is not None:
    configs = {name: weights_config(folder) for name, folder in pipeline.transformers.items()}
    if len(set(configs.values())) > 1:
      raise ValueError(f"{path}: the experts' configs describe different models "
                       f"({configs}); both experts of a pipeline must have one shape")
    return configs["high"]
  if is_diffusers_folder(path):
    return wan_weights.read_config(path)
  try:
    return read_model_json(path)
  except FileNotFoundError:
    return None


def with_weights_shape(cfg: ModelConfig, path: str, explicit: dict[str, Any]) -> ModelConfig:
  """`cfg` with its shape (width, depth, heads, channels, ...) taken from the weights at `path`,
  keeping the run's own fields (`RUN_FIELDS`: dtype, layout, attention, LoRA, ...). A shape
  field set explicitly (`explicit`, the config's `model.*` overrides) that disagrees with the
  weights, or another model family, is an error naming both values."""
  stored = weights_config(path)
  if stored is None:
    return cfg
  if family_of(stored) != family_of(cfg):
    raise ValueError(f"config.model.family={family_of(cfg)!r}, but init_from={path} holds a "
                     f"{family_of(stored)!r} model")
  names = {f.name for f in dataclasses.fields(stored)}
  for key, value in explicit.items():
    if key in names and key not in RUN_FIELDS:
      have = getattr(stored, key)
      if (tuple(value) if isinstance(value, list) else value) != have:
        raise ValueError(f"config.model.{key}={value!r}, but the weights in {path} have "
                         f"{key}={have!r}: drop the override (the shape comes from the weights)")
  return stored.replace(**{k: getattr(cfg, k) for k in RUN_FIELDS if k in names})


def _scanned(tree: Any) -> bool:
  """Whether a params tree has its blocks stacked (`blocks`) rather than looped (`block_<i>`)."""
  return "blocks" in tree


def _relayout(manager, step: int, stored: Any, target: Any, source: str) -> Any:
  """Restores params saved in the other block layout (looped vs scanned) onto the first device,
  converts them, and places them on `target`. One warning: converting once (`python -m
  densedpo_jax.convert ... --scan_layers`) saves the host memory of doing it at every start."""
  depth = (jax.tree_util.tree_leaves(stored["blocks"])[0].shape[0] if _scanned(stored)
           else sum(k.startswith("block_") for k in stored))
  logging.warning("init_from: %s holds %s blocks and the model is %s: converting on load",
                  source, "scanned" if _scanned(stored) else "looped",
                  "scanned" if _scanned(target) else "looped")
  host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])  # Host memory, not a GPU's.
  abstract = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=host), stored)
  params = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract)))["params"]
  params = unstack_blocks(params, depth) if _scanned(stored) else stack_blocks(params, depth)
  return _place(jax.tree_util.tree_map(np.asarray, params), target, source)


def write_model_json(directory: str, cfg: ModelConfig) -> None:
  """Records the model config of a run or params directory, LoRA settings included (the adapter
  exporter reads them; exported params have the adapter folded in)."""
  directory = distributed.path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / MODEL_JSON).write_text(json.dumps(config_to_dict(cfg), indent=1))


def read_model_json(path: str) -> ModelConfig:
  """The config in `model.json` of a params directory (or of the workdir above a step folder)."""
  directory, _ = _checkpoint_dir(path)
  for candidate in (distributed.path(path), directory.parent):
    if (candidate / MODEL_JSON).is_file():
      return config_from_dict(json.loads((candidate / MODEL_JSON).read_text()))
  raise FileNotFoundError(f"{path}: no {MODEL_JSON} (written by runs and by "
                          "`python -m densedpo_jax.convert`); pass the model config explicitly")


def save_params(directory: str, params: Any, cfg: ModelConfig, step: int = 0) -> str:
  """Writes `params` as `<directory>/checkpoints/<step>/params` plus `model.json`; returns the
  checkpoints folder. `config.init_from=<directory>` and `load_pretrained` read it. An existing
  params directory is refused: its model.json and weights could disagree after a partial write."""
  path = distributed.path(directory) / "checkpoints"
  if path.exists() or (distributed.path(directory) / MODEL_JSON).exists():
    raise FileExistsError(f"{directory} already holds params ({path}); delete it or choose "
                          "another destination")
  manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=True),
                                  item_names=("params",))
  manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), force=True)
  manager.wait_until_finished()
  manager.close()
  write_model_json(directory, cfg)  # Last: a folder with a model.json is complete.
  return str(path)


def load_pretrained(path: str, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
  """`(module, variables)` of pretrained weights, ready for `module.apply(variables, x, t, text, mask)`.

  Args:
    path: a diffusers `transformer/` folder, a folder written by `python -m densedpo_jax.convert`,
      a run's workdir (its exported params: LoRA already folded in; for a run that adapted both
      A14B experts, an `experts.TwoExperts` module routing each sample), or a one-transformer
      pipeline folder.
    **overrides: config fields to change, e.g. `dtype='bfloat16'`, `scan_layers=True`.
  """
  pipeline = experts.read_pipeline(path)
  if pipeline is not None:
    if pipeline.two_experts:
      raise ValueError(f"{path} holds two experts: load {pipeline.transformers['high']} (high "
                       f"noise) or {pipeline.transformers['low']} (low noise)")
    path = pipeline.transformers["high"]
  if is_diffusers_folder(path):
    cfg = wan_weights.read_config(path)
  else:
    cfg = read_model_json(path)
  cfg = cfg.replace(lora=LoRAConfig()).replace(**overrides)
  boundary = experts.both_run_boundary(path)
  if boundary is not None:  # A run that adapted both A14B experts: one routed module.
    return (experts.TwoExperts(cfg, boundary),
            {"params": read_params_on_device(path, cfg, two_experts=True)})
  return build(cfg), {"params": read_params_on_device(path, cfg)}


def read_params_on_device(path: str, cfg: ModelConfig, two_experts: bool = False) -> Any:
  """`read_params` of `cfg`'s model (no adapter) onto the first local device; with
  `two_experts`, a `{'high': ..., 'low': ...}` tree (a run that adapted both A14B experts)."""
  cfg = cfg.replace(lora=LoRAConfig())
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                  nn.unbox(abstract_params(cfg)))
  if two_experts:
    target = {name: target for name in experts.EXPERTS}
  return read_params(path, target, cfg)


def read_item(workdir: str, item: str, step: int | None = None) -> tuple[int, Any]:
  """`(step, tree)` of one item (`'state'` or `'params'`) of a run's checkpoint, restored onto the
  first local device whatever mesh saved it (for tools: export, inspection). Default: latest
  step."""
  directory = distributed.path(workdir) / "checkpoints"
  if not directory.is_dir():
    raise FileNotFoundError(f"{workdir}: no checkpoints folder (expected {directory})")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True, create=False, save_interval_steps=0),
                                  item_names=(item,))
  try:
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
      raise FileNotFoundError(f"{directory}: no checkpoint step {step} (found "
                              f"{list(manager.all_steps())})")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        manager.item_metadata(step)[item])
    restored = manager.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(target)}))
  finally:
    manager.close()
  return step, restored[item]
