"""Memory plan of a training config: per-device bytes, planned and compiled.

    python -m densedpo_jax.plan --config=configs/dense.py:wan1.3b [--devices=8 --device_memory=80G]
        [--latent=21,60,104 --text_len=512] [--compiled [--condition=first_frame]]
        [--config.x=y ...]

`plan` is an analytic count over `jax.eval_shape` shapes: parameters (frozen base), LoRA (or the
trained params), optimiser state (AdamW: two moments, plus EMA), gradients, and activations with
the remat policy. `compiled` AOT-lowers and compiles the real train step with abstract inputs
(`jax.ShapeDtypeStruct`) on a mesh of that many devices (fake CPU devices here) and reports XLA's
`memory_analysis()`: the truth for that backend's buffer assignment. Image-to-video models that
concatenate a condition (Wan 2.1 I2V, Wan 2.2 I2V) get it from their channels; Wan 2.2 TI2V trains
text-to-video or, on records encoded with `--condition=first_frame`, image-to-video:
`--condition=first_frame` compiles that step.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

GIB = 2 ** 30
IMAGE_TOKENS = 257  # CLIP ViT-H features of Wan 2.1 I2V's conditioning frame.


def _bytes(dtype) -> int:
  return np.dtype(dtype).itemsize if str(dtype) != "bfloat16" else 2


def videos_per_device(config, mesh_shape: dict[str, int]) -> float:
  """Videos one device runs a micro-step: DPO runs both members of its pairs."""
  per = config.data.batch_size / (mesh_shape["data"] * mesh_shape["fsdp"]) / config.optim.accum_steps
  return per * (1 if config.loss == "flow_matching" else 2)


def plan(config, cfg, latent: tuple[int, int, int], text_len: int, mesh_shape: dict[str, int]
         ) -> dict[str, float]:
  """Planned bytes per device: params, lora, optimizer, grads, activations, total."""
  from densedpo_jax.model import param_count
  shard = mesh_shape["fsdp"] * mesh_shape["tensor"]  # Weights split over fsdp x tensor.
  base = param_count(cfg.replace(lora=cfg.lora.__class__())) * _bytes(cfg.param_dtype) / shard
  trained = param_count(cfg, "lora") if config.loss != "flow_matching" or cfg.lora.rank else None
  trained = trained if trained is not None else param_count(cfg)
  trained_bytes = trained * 4 / shard
  moments = 2 + (1 if config.ema_decay > 0 else 0)
  pt, ph, pw = cfg.patch_size
  n = (latent[0] // pt) * (latent[1] // ph) * (latent[2] // pw)
  d, m, heads = cfg.width, cfg.mlp_dim, cfg.num_heads
  act = _bytes(cfg.dtype)
  l = getattr(cfg, "text_len", text_len) if not getattr(cfg, "cross_attn_mask", True) else text_len
  l += IMAGE_TOKENS if getattr(cfg, "image_dim", 0) else 0  # Wan 2.1 I2V also attends to CLIP.
  # Saved per token and layer without remat: ~14 D-wide tensors (norms, q/k/v, attention and
  # cross-attention in and out, residuals) and 2 MLP-wide ones, plus the attention probabilities
  # (xla: heads x N per query token; blockwise: one log-sum-exp per head) and cross-attention's.
  attn = heads * n if cfg.attention_impl == "xla" else heads  # cudnn / splash / blockwise: flash.
  # Context parallelism: a device holds 1 / sequence of the tokens (queries), plus the gathered
  # keys and values of one self-attention (and their gradients in the backward).
  seq = mesh_shape.get("sequence", 1)
  n_local = n / seq
  tokens = n_local * (14 * d + 2 * m) * act
  probs = n_local * (attn + heads * l) * 4 / mesh_shape["tensor"]
  gathered = 0 if seq == 1 else 2 * 2 * n * d * act
  v = videos_per_device(config, mesh_shape)
  # The backward holds one block's activations and their gradients on top of what is saved.
  if cfg.remat_policy == "none":  # Measured: XLA keeps about twice the tensors listed above.
    activations = v * ((2 * cfg.depth + 2) * (tokens + probs) + cfg.depth * gathered)
  else:  # Block inputs kept, one block recomputed at a time (needs scan_layers; docs/scaling.md):
    # its tensors twice and their gradients, the attention weights and their gradient.
    activations = v * (cfg.depth * n_local * d * act + 3 * tokens + 2 * probs + gathered)
  # Both A14B experts in one run (config.expert='both'): two bases and adapters; a micro-batch
  # whose pairs fall on both sides of the boundary runs (and keeps activations for) both.
  experts = 2 if config.get("expert", "") == "both" else 1
  out = {"params": experts * base, "trained": experts * trained_bytes,
         "optimizer": experts * moments * trained_bytes, "grads": experts * trained_bytes,
         "activations": experts * activations}
  out["total"] = sum(out.values())
  return out


def compiled(config, latent: tuple[int, int, int], text_len: int, num_devices: int,
             condition: str | None = None):
  """XLA's memory analysis of the real train step, lowered with abstract inputs on a mesh.
  `condition='first_frame'`: the batch carries a one-frame `cond_latent [B, 1, h, w, C]` (TI2V's
  image-to-video); a concat model's condition is always included."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from densedpo_jax.training import checkpointing, sharding, train_step
  from densedpo_jax.training.builders import model_config
  from densedpo_jax.model import build, experts
  cfg = model_config(config, portable_attention=False)
  tx = train_step.make_optimizer(config.optim)
  # Both A14B experts: the step's buffers do not depend on where the boundary lies.
  model = experts.TwoExperts(cfg, 0.5) if config.get("expert", "") == experts.BOTH else build(cfg)
  mesh = sharding.create_mesh(config.mesh.shape, None, jax.devices()[:num_devices])
  rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.mesh.rules)
  lora = config.loss != "flow_matching" or cfg.lora.rank > 0
  one = lambda shape, dtype=jnp.float32: jnp.zeros((1,) + shape, dtype)
  inputs = (one(latent + (cfg.in_channels,)), jnp.zeros((1,)), one((text_len, cfg.text_dim)),
            one((text_len,), bool))
  init = lambda k: model.init(k, *inputs)
  key = jax.random.key(0)
  variables = jax.eval_shape(init, key)
  state = jax.eval_shape(lambda k: train_step.init_state(
      init(k)["lora" if lora else "params"], tx, use_ema=config.ema_decay > 0), key)
  state_sh = sharding.logical_shardings(state, mesh, rules)
  params_sh = sharding.logical_shardings(variables["params"], mesh, rules) if lora else {}
  b = config.data.batch_size
  batch_sh = sharding.batch_sharding(mesh)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct((b,) + shape, dtype, sharding=batch_sh)
  t_lat = latent[0]
  c = cfg.latent_channels
  if config.loss == "flow_matching":
    batch = {"latent": spec(latent + (c,), jnp.bfloat16)}
  else:
    batch = {"latent_a": spec(latent + (c,), jnp.bfloat16),
             "latent_b": spec(latent + (c,), jnp.bfloat16),
             "labels": spec((t_lat,), jnp.int8), "global_label": spec((), jnp.int8),
             "segment_ids": spec((t_lat,), jnp.int32)}
  batch.update(text_emb=spec((text_len, cfg.text_dim), jnp.bfloat16),
               text_mask=spec((text_len,), jnp.bool_))
  if condition not in (None, "first_frame"):
    raise ValueError(f"plan: condition={condition!r}; expected first_frame or none")
  if cfg.in_channels != c:  # Image-to-video (concat): the records' first-frame condition.
    batch["cond_latent"] = spec(latent + (c,), jnp.bfloat16)
  elif condition == "first_frame":  # TI2V: frame 0 is the condition, at noise level 0.
    batch["cond_latent"] = spec((1,) + latent[1:] + (c,), jnp.bfloat16)
    if getattr(cfg, "image_dim", 0):
      batch["image_emb"] = spec((IMAGE_TOKENS, cfg.image_dim), jnp.bfloat16)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  step = jax.jit(train_step.make_train_step(model, config, tx, shards,
                                            NamedSharding(mesh, P(None, sharding.BATCH_AXES))),
                 in_shardings=(state_sh, params_sh, batch_sh, None),
                 out_shardings=(state_sh, None), donate_argnums=(0,))
  abstract = lambda tree, sh: checkpointing.abstract_like(nn.unbox(tree), sh)
  frozen = abstract(variables["params"], params_sh) if lora else {}
  state = abstract(state, state_sh)  # Unboxed outside the mesh scope (unbox would constrain).
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    lowered = step.lower(state, frozen, batch, key)
  return lowered.compile().memory_analysis()


def _size(text: str) -> float:
  units = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
  return float(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else float(text)


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config file[:arg]")
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--device_memory", default="80G", help="bytes per device (80G, 95G, ...)")
  parser.add_argument("--latent", default="", help="T,H,W of one latent (default: the preset's)")
  parser.add_argument("--text_len", type=int, default=0)
  parser.add_argument("--compiled", action="store_true", help="also AOT-compile the step")
  parser.add_argument("--condition", choices=("none", "first_frame"), default="none",
                      help="with --compiled: first_frame compiles TI2V's image-to-video step")
  args, overrides = parser.parse_known_args(argv)
  if args.compiled and "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
  from densedpo_jax.training.builders import model_config, with_overrides
  from densedpo_jax.main import _load_config
  from densedpo_jax.model.__main__ import TYPICAL_INPUT
  from densedpo_jax.model.attention import check_platform
  from densedpo_jax.training.sharding import resolve_mesh_shape, MESH_AXES
  config = _load_config(args.config)
  config = with_overrides(config, **{o.split("=", 1)[0][len("--config."):]: _literal(o.split("=", 1)[1])
                                     for o in overrides if o.startswith("--config.")})
  cfg = model_config(config, portable_attention=False)
  latent, text_len = TYPICAL_INPUT.get(config.model.preset, ((16, 16, 16), 16))
  latent = tuple(int(x) for x in args.latent.split(",")) if args.latent else tuple(latent)
  text_len = args.text_len or text_len
  mesh = dict(zip(MESH_AXES, resolve_mesh_shape(config.mesh.shape, args.devices)))
  p = plan(config, cfg, latent, text_len, mesh)
  limit = _size(args.device_memory)
  print(f"{args.config}: {config.model.family} {config.model.preset}, latent {list(latent)}, "
        f"batch {config.data.batch_size} (accum {config.optim.accum_steps}), mesh {mesh}, remat "
        f"{cfg.remat_policy}, attention {cfg.attention_impl}, compute {cfg.dtype}")
  for k, v in p.items():
    print(f"  planned {k:<12} {v / GIB:10.2f} GiB")
  print(f"  verdict: {'fits' if p['total'] <= 0.9 * limit else 'does NOT fit'} in "
        f"{limit / GIB:.0f} GiB per device (90% usable)")
  if args.compiled:
    try:
      check_platform(cfg.attention_impl)
    except ValueError as e:
      raise SystemExit(f"plan --compiled: {e}") from None
    if args.condition == "first_frame" and cfg.in_channels != cfg.latent_channels:
      raise SystemExit(f"plan --condition=first_frame: {config.model.preset} concatenates its "
                       "condition over channels (always compiled); first_frame is Wan 2.2 "
                       "TI2V's image-to-video")
    m = compiled(config, latent, text_len, args.devices,
                 None if args.condition == "none" else args.condition)
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - \
        m.alias_size_in_bytes
    print(f"  compiled arguments {m.argument_size_in_bytes / GIB:.2f} GiB, temp "
          f"{m.temp_size_in_bytes / GIB:.2f} GiB, total {total / GIB:.2f} GiB per device")


def _literal(text: str) -> Any:
  import ast
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


if __name__ == "__main__":
  main()
