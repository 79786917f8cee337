"""Wan weights (2.1 and 2.2, text- and image-to-video) between diffusers (`WanTransformer3DModel`) and our Flax `WanTransformer`.

One rule table maps every diffusers tensor to one Flax parameter and back (t5x's importer style:
an unmatched key on either side is an error naming it). Transforms:

    linear  torch `[out, in]`            <-> Flax kernel `[in, out]`
    conv    Conv3d `[D, C, pt, ph, pw]`  <-> Dense kernel on patches `[pt*ph*pw*C, D]`
    copy    norms' weights, biases, `scale_shift_table` (same shape)

LoRA adapters map to PEFT's layout (`transformer.<module>.lora_A.weight [r, in]`,
`lora_B.weight [out, r]`, alpha in the `lora_adapter_metadata`), which diffusers'
`WanPipeline.load_lora_weights` reads. Reading uses `safetensors` only (no torch).
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterator

import flax.linen as nn
import numpy as np
from flax import traverse_util

from densedpo_jax.model.config import LORA_TARGETS, LoRAConfig, WanConfig
from densedpo_jax.model.layout import stack_blocks, unstack_blocks
from densedpo_jax.model.registry import abstract_params

LORA_MODULES = {  # Our LoRA target name -> the module inside a diffusers block.
    "self_q": "attn1.to_q", "self_k": "attn1.to_k", "self_v": "attn1.to_v",
    "self_out": "attn1.to_out.0", "cross_q": "attn2.to_q", "cross_k": "attn2.to_k",
    "cross_v": "attn2.to_v", "cross_out": "attn2.to_out.0", "mlp_in": "ffn.net.0.proj",
    "mlp_out": "ffn.net.2",
}
assert set(LORA_MODULES) == set(LORA_TARGETS)


def _module_path(module: str) -> str:
  """diffusers module name -> Flax module path (`blocks.3.attn1.to_out.0` -> `block_3/attn1/to_out`)."""
  parts = module.split(".")
  if parts[0] == "blocks":
    parts = [f"block_{parts[1]}"] + parts[2:]
  path = "/".join(parts)
  return path.replace("to_out/0", "to_out").replace("net/0/proj", "net_0").replace("net/2", "net_2")


IMAGE_EMBEDDER = "condition_embedder.image_embedder"  # Wan 2.1 I2V's image branch.


def linear_modules(cfg: WanConfig) -> list[str]:
  """Every `nn.Linear` of the transformer of `cfg`, by diffusers module name."""
  top = ["condition_embedder.time_embedder.linear_1", "condition_embedder.time_embedder.linear_2",
         "condition_embedder.time_proj", "condition_embedder.text_embedder.linear_1",
         "condition_embedder.text_embedder.linear_2", "proj_out"]
  block = list(LORA_MODULES.values())
  if cfg.image_dim:
    top += [f"{IMAGE_EMBEDDER}.ff.net.0.proj", f"{IMAGE_EMBEDDER}.ff.net.2"]
    block += ["attn2.add_k_proj", "attn2.add_v_proj"]
  return top + [f"blocks.{i}.{m}" for i in range(cfg.depth) for m in block]


def rules(cfg: WanConfig) -> dict[str, tuple[str, str]]:
  """`{diffusers key: (Flax param path, transform)}` for the model of `cfg` (looped layout)."""
  table = {"patch_embedding.weight": ("patch_embedding/kernel", "conv"),
           "patch_embedding.bias": ("patch_embedding/bias", "copy"),
           "scale_shift_table": ("scale_shift_table", "copy")}
  for module in linear_modules(cfg):
    table[f"{module}.weight"] = (f"{_module_path(module)}/kernel", "linear")
    table[f"{module}.bias"] = (f"{_module_path(module)}/bias", "copy")
  norms = ["attn1.norm_q", "attn1.norm_k", "attn2.norm_q", "attn2.norm_k"]
  norms += ["attn2.norm_added_k"] if cfg.image_dim else []
  for i in range(cfg.depth):
    for norm in norms:
      table[f"blocks.{i}.{norm}.weight"] = (f"block_{i}/{norm.replace('.', '/')}/scale", "copy")
    table[f"blocks.{i}.norm2.weight"] = (f"block_{i}/norm2/scale", "copy")
    table[f"blocks.{i}.norm2.bias"] = (f"block_{i}/norm2/bias", "copy")
    table[f"blocks.{i}.scale_shift_table"] = (f"block_{i}/scale_shift_table", "copy")
  if cfg.image_dim:
    for norm in ("norm1", "norm2"):
      path = f"{_module_path(IMAGE_EMBEDDER)}/{norm}"
      table[f"{IMAGE_EMBEDDER}.{norm}.weight"] = (f"{path}/scale", "copy")
      table[f"{IMAGE_EMBEDDER}.{norm}.bias"] = (f"{path}/bias", "copy")
  return table


def to_flax(value: np.ndarray, transform: str) -> np.ndarray:
  if transform == "linear":
    return value.T
  if transform == "conv":
    return value.transpose(2, 3, 4, 1, 0).reshape(-1, value.shape[0])
  return value


def from_flax(value: np.ndarray, transform: str, cfg: WanConfig) -> np.ndarray:
  if transform == "linear":
    return value.T
  if transform == "conv":
    pt, ph, pw = cfg.patch_size
    return value.reshape(pt, ph, pw, cfg.in_channels, cfg.width).transpose(4, 3, 0, 1, 2)
  return value


# Config.

def read_config(path: str) -> WanConfig:
  """The `WanConfig` of a diffusers `transformer/` folder (its `config.json`)."""
  file = os.path.join(path, "config.json")
  try:
    with open(file) as f:
      c = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{file}: cannot read a diffusers config: {e}") from e
  if c.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
    raise ValueError(f"{file}: _class_name is {c['_class_name']!r}; expected "
                     "'WanTransformer3DModel' (the transformer/ folder of a Wan 2.1 or 2.2 "
                     "checkpoint)")
  unsupported = {"cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
                 "pos_embed_seq_len": None}
  for key, want in unsupported.items():
    if c.get(key, want) != want:
      raise ValueError(f"{file}: {key}={c[key]!r} is not supported (the Wan 2.1 / 2.2 text- and "
                       f"image-to-video models have {key}={want!r}; FLF2V has pos_embed_seq_len)")
  try:
    width = c["num_attention_heads"] * c["attention_head_dim"]
    image_dim = c.get("image_dim") or 0
    if (c.get("added_kv_proj_dim") or 0) != (width if image_dim else 0):
      raise ValueError(f"{file}: added_kv_proj_dim={c.get('added_kv_proj_dim')!r} with "
                       f"image_dim={c.get('image_dim')!r}; supported: both None, or image_dim "
                       f"with added_kv_proj_dim = the width {width} (Wan 2.1 I2V)")
    in_channels = c.get("in_channels", 16)
    out_channels = c.get("out_channels") or in_channels
    return WanConfig(patch_size=tuple(c.get("patch_size", (1, 2, 2))), in_channels=in_channels,
                     out_channels=0 if out_channels == in_channels else out_channels,
                     image_dim=image_dim, width=width,
                     depth=c["num_layers"], num_heads=c["num_attention_heads"],
                     ffn_dim=c["ffn_dim"], text_dim=c.get("text_dim", 4096),
                     time_freq_dim=c.get("freq_dim", 256), eps=c.get("eps", 1e-6))
  except KeyError as e:
    raise ValueError(f"{file}: missing config key {e}") from e


def diffusers_config(cfg: WanConfig) -> dict[str, Any]:
  """The `config.json` of a diffusers `WanTransformer3DModel` equal to `cfg`."""
  return {"_class_name": "WanTransformer3DModel", "patch_size": list(cfg.patch_size),
          "num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.head_dim,
          "in_channels": cfg.in_channels, "out_channels": cfg.latent_channels,
          "text_dim": cfg.text_dim, "freq_dim": cfg.time_freq_dim, "ffn_dim": cfg.ffn_dim,
          "num_layers": cfg.depth, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
          "eps": cfg.eps, "image_dim": cfg.image_dim or None,
          "added_kv_proj_dim": cfg.width if cfg.image_dim else None, "rope_max_seq_len": 1024,
          "pos_embed_seq_len": None}


# Reading.

FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})


def _safetensors_files(path: str) -> list[str]:
  indexes = glob.glob(os.path.join(path, "*.safetensors.index.json"))
  if indexes:
    with open(indexes[0]) as f:
      weight_map = json.load(f)["weight_map"]
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
    if missing:
      raise FileNotFoundError(f"{indexes[0]} lists {missing}, which are not in {path}")
    return [os.path.join(path, f) for f in files]
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"{path}: no *.safetensors files")
  return files


def iter_tensors(path: str) -> Iterator[tuple[str, str, np.ndarray]]:
  """`(file, key, numpy array)` for every tensor of a diffusers folder (bf16 stays bf16)."""
  from safetensors import SafetensorError, safe_open
  for file in _safetensors_files(path):
    try:
      with safe_open(file, framework="flax") as f:
        for key in f.keys():
          yield file, key, np.asarray(f.get_tensor(key))
    except SafetensorError as e:
      raise ValueError(f"{file}: not a readable safetensors file (truncated or corrupt?): {e}") from e


def load_diffusers(path: str, cfg: WanConfig) -> dict[str, Any]:
  """Numpy params of `cfg`'s model (looped or scanned, `cfg.param_dtype`) from a diffusers folder.

  Every tensor must match one rule and every parameter must be filled, with the expected shape;
  errors name the key, its file and the expected shape.
  """
  table = rules(cfg)
  expected = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(
      nn.unbox(abstract_params(cfg.replace(scan_layers=False, lora=LoRAConfig())))).items()}
  flat, seen = {}, {}
  for file, key, value in iter_tensors(path):
    if key not in table:
      raise ValueError(f"{file}: unexpected tensor {key!r} of shape {value.shape}: not a key of "
                       f"a WanTransformer3DModel with {cfg.depth} layers, in_channels "
                       f"{cfg.in_channels}, image_dim {cfg.image_dim}")
    if key in seen:
      raise ValueError(f"{file}: tensor {key!r} appears twice (also in {seen[key]})")
    seen[key] = file
    if value.dtype.name not in FLOAT_DTYPES:  # Integer bits read as floats would load as garbage.
      raise ValueError(f"{file}: tensor {key!r} is stored as {value.dtype.name}; weights must be "
                       f"one of {sorted(FLOAT_DTYPES)} (a corrupt or hand-edited header?)")
    target, transform = table[key]
    converted = to_flax(value, transform)
    if converted.shape != expected[target]:
      raise ValueError(f"{file}: {key!r} has shape {value.shape}; {target} expects "
                       f"{expected[target]} after the {transform} transform")
    flat[target] = converted.astype(np.dtype(cfg.param_dtype))
  missing = sorted(set(table) - set(seen))
  if missing:
    shapes = [f"{k} (-> {table[k][0]} {expected[table[k][0]]})" for k in missing[:5]]
    raise ValueError(f"{path}: {len(missing)} tensor(s) missing, e.g. {shapes}")
  params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
  return stack_blocks(params, cfg.depth) if cfg.scan_layers else params


# Writing.

def _looped(tree: Any, cfg: WanConfig) -> dict[str, Any]:
  tree = nn.unbox(tree)
  return unstack_blocks(tree, cfg.depth) if cfg.scan_layers else tree


def to_diffusers(params: Any, cfg: WanConfig) -> dict[str, np.ndarray]:
  """Our params (looped or scanned) -> the diffusers state dict, as numpy arrays."""
  flat = {"/".join(k): np.asarray(v) for k, v in
          traverse_util.flatten_dict(_looped(params, cfg)).items()}
  out = {}
  for key, (path, transform) in rules(cfg).items():
    if path not in flat:
      raise KeyError(f"to_diffusers: params lack {path} (for {key})")
    out[key] = np.ascontiguousarray(from_flax(flat.pop(path), transform, cfg))
  if flat:
    raise KeyError(f"to_diffusers: params {sorted(flat)[:5]} have no diffusers key")
  return out


def lora_to_peft(lora: Any, cfg: WanConfig, prefix: str = "transformer"
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Our `'lora'` tree -> (PEFT state dict, adapter metadata) for `load_lora_weights`.

  PEFT computes `W x + (lora_alpha / r) B A x` with `A [r, in]`, `B [out, r]`: our `x A B` with
  `A [in, r]`, `B [r, out]`, transposed; `lora_alpha` keeps our `alpha` (scale `alpha / rank`).
  """
  flat = traverse_util.flatten_dict(_looped(lora, cfg))
  state, targets = {}, []
  for i in range(cfg.depth):
    for module in LORA_MODULES.values():
      path = tuple(_module_path(f"blocks.{i}.{module}").split("/"))
      if path + ("lora_a",) not in flat:
        continue
      name = f"blocks.{i}.{module}"
      targets.append(name)
      state[f"{prefix}.{name}.lora_A.weight"] = np.ascontiguousarray(np.asarray(flat[path + ("lora_a",)]).T)
      state[f"{prefix}.{name}.lora_B.weight"] = np.ascontiguousarray(np.asarray(flat[path + ("lora_b",)]).T)
  if not targets:
    raise ValueError("lora_to_peft: the adapter tree has no LoRA factors")
  rank = cfg.lora.rank
  metadata = {f"{prefix}.r": rank, f"{prefix}.lora_alpha": cfg.lora.alpha or rank,
              f"{prefix}.target_modules": targets}
  return state, metadata


# diffusers module -> the original Wan repository's (ComfyUI, musubi-tuner and most LoRAs shared
# for Wan name modules this way, under `diffusion_model.`).
WAN_ORIGINAL_MODULES = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o", "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
assert set(WAN_ORIGINAL_MODULES) == set(LORA_MODULES.values())


def peft_to_wan_original(peft: dict[str, np.ndarray], metadata: dict[str, Any]
                         ) -> dict[str, np.ndarray]:
  """`lora_to_peft`'s output (prefix 'transformer') -> a LoRA state dict in the original Wan key
  layout, which ComfyUI and musubi-tuner load: `diffusion_model.blocks.N.self_attn.q.lora_down
  .weight` `[r, in]`, `.lora_up.weight` `[out, r]` and `.alpha` (a float32 scalar; the update is
  `(alpha / r) up @ down`)."""
  alpha = np.asarray(metadata["transformer.lora_alpha"], np.float32)
  out = {}
  for target in metadata["transformer.target_modules"]:
    block, index, module = target.split(".", 2)
    name = f"diffusion_model.{block}.{index}.{WAN_ORIGINAL_MODULES[module]}"
    out[f"{name}.lora_down.weight"] = peft[f"transformer.{target}.lora_A.weight"]
    out[f"{name}.lora_up.weight"] = peft[f"transformer.{target}.lora_B.weight"]
    out[f"{name}.alpha"] = alpha
  return out
