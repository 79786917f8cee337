"""What the step benchmarks share: presets, a step of ours ready to time, timers, FLOP counts.

JAX only (the PyTorch side is `benchmarks/torch_videodit.py`). The presets (LoRA rank 16 on every
projection, text dimension 64 unless the model preset says otherwise):

  tiny   ShapesWorld's preset: width 128, depth 4, 4 heads, latent 16x16x16x3 (256 tokens),
         text 16x64, 16 pairs (or videos)
  small  the `small` DiT (width 384, depth 12), latent 4x16x16x16, text 16x512, 2 pairs
  mid    tiny widened to width 384, depth 12, 6 heads, latent 16x32x32x3 (1,024 tokens),
         text 16x64, 4 pairs
"""
from __future__ import annotations

import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs.common import base
from densedpo_jax.training import train_step
from densedpo_jax.training.builders import model_config
from densedpo_jax.model import build, forward_flops

# name: (model preset, model overrides, latent [T, H, W, C], text [L, D], batch)
PRESETS = {
    "tiny": ("tiny", {}, (16, 16, 16, 3), (16, 64), 16),
    "small": ("small", {}, (4, 16, 16, 16), (16, 512), 2),
    "mid": ("tiny", dict(width=384, depth=12, num_heads=6), (16, 32, 32, 3), (16, 64), 4),
}


def make_config(preset: str, loss: str, dtype: str = "float32"):
  """The training config of `preset` for `loss` (flow matching trains every parameter, no LoRA)
  computing in `dtype`; bf16 on a GPU takes cuDNN attention, as configs/common.py does."""
  model_preset, overrides, _, _, batch = PRESETS[preset]
  c = base()
  c.model.preset, c.loss, c.data.batch_size = model_preset, loss, batch
  c.model.update(overrides)
  c.model.dtype = dtype
  if dtype == "bfloat16" and jax.default_backend() == "gpu":
    c.model.attention_impl = "cudnn"
  if loss == "flow_matching":
    c.lora.rank = 0
  return c


def timed(fn) -> float:
  """Seconds of `fn()`, its result waited on with `jax.block_until_ready`."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
  """Median seconds of `repeats` calls of `fn()` after `warmup` untimed ones; `fn`'s result is
  waited on (a function that returns host values is timed as it returns)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  return statistics.median(timed(fn) for _ in range(repeats))


def matmul_ceiling(n: int, repeats: int, statistic=min) -> tuple[float, str]:
  """FLOP/s of a jitted n x n matmul (bf16 on an accelerator, f32 on CPU) from `statistic`
  (default the best) of `repeats` timed runs, and the dtype's name."""
  dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(jnp.matmul)
  jax.block_until_ready(f(a, b))
  seconds = statistic([timed(lambda: f(a, b)) for _ in range(repeats)])
  return 2 * n**3 / seconds, jnp.dtype(dtype).name


def time_steps(steps: dict, rounds: int) -> dict[str, float]:
  """Median seconds of each step `{name: () -> loss}`: one warm-up each, then `rounds` rounds
  taking them in turn, each round starting with the next one, so that the load of a shared
  machine falls on all of them alike and their ratios are comparable."""
  for name, step in steps.items():
    start = time.perf_counter()
    loss = step()
    print(f"  warm-up {name}: {time.perf_counter() - start:.1f} s, loss {loss:.4g}", flush=True)
    assert np.isfinite(loss), name
  names, times = list(steps), {name: [] for name in steps}
  for i in range(rounds):
    for name in names[i % len(names):] + names[:i % len(names)]:
      start = time.perf_counter()
      steps[name]()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def make_batch(loss: str, latent, text, batch: int, rng: np.random.Generator) -> dict:
  """A random batch of `loss`: `batch` videos `latent [T, H, W, C]` for flow matching, else
  `batch` pairs with segment labels (some ties, never all), text `[L, D]` half masked."""
  t = latent[0]
  common = {"text_emb": rng.standard_normal((batch,) + text, np.float32),
            "text_mask": np.arange(text[0])[None].repeat(batch, 0) < text[0] // 2 + 1}
  if loss == "flow_matching":
    return dict(common, latent=rng.standard_normal((batch,) + latent, np.float32))
  labels = rng.choice(np.array([-1, 0, 1], np.int32), size=(batch, t), p=[0.4, 0.2, 0.4])
  labels[:, 0] = 1
  return dict(common, latent_a=rng.standard_normal((batch,) + latent, np.float32),
              latent_b=rng.standard_normal((batch,) + latent, np.float32),
              labels=labels, global_label=rng.choice(np.array([-1, 1], np.int32), size=batch),
              segment_ids=np.repeat(np.arange(t, dtype=np.int32)[None] // 4, batch, 0))


def build_step(c, latent, text, batch: int):
  """The jitted step of config `c` (one device, state donated) on a random batch of its loss.

  Returns `(cfg, step, state, frozen, data, variables)`; call `step(state, frozen, data, key)`.
  """
  cfg = model_config(c)
  model = build(cfg)
  tx = train_step.make_optimizer(c.optim)
  data = make_batch(c.loss, latent, text, batch, np.random.default_rng(0))
  data = jax.tree_util.tree_map(jnp.asarray, data)
  variables = nn.unbox(model.init(
      jax.random.key(0), jnp.zeros((1,) + latent), jnp.zeros((1,)),
      jnp.zeros((1,) + text), jnp.ones((1, text[0]), bool)))
  if c.loss == "flow_matching":
    trainable, frozen = variables["params"], {}
  else:
    trainable, frozen = variables["lora"], variables["params"]
  state = train_step.init_state(trainable, tx, use_ema=False)
  step = jax.jit(train_step.make_train_step(model, c, tx), donate_argnums=0)
  return cfg, step, state, frozen, data, variables


class OursStep:
  """`build_step`'s jitted step, called with a donated state; a call returns the step's loss."""

  def __init__(self, c, latent, text, batch: int):
    self.cfg, self.step, self.state, self.frozen, self.data, self.variables = build_step(
        c, latent, text, batch)
    self.key = jax.random.key(1)

  def __call__(self) -> float:
    self.state, metrics = jax.block_until_ready(
        self.step(self.state, self.frozen, self.data, self.key))
    return float(metrics.compute()["loss"])


def step_flops(cfg, loss: str, latent, text, batch: int) -> float:
  """Matmul FLOPs of one train step: flow matching on `batch` videos, 3 forwards (the backward
  takes two); DPO on `batch` pairs, the policy's forward and backward (LoRA gradients only: about
  one forward each) on 2B videos and the reference's forward."""
  fwd = lambda b, lora: forward_flops(cfg, b, *latent[:3], text[0], lora_enabled=lora)
  if loss == "flow_matching":
    return 3 * fwd(batch, False)
  return 2 * fwd(2 * batch, True) + fwd(2 * batch, False)


def random_like(tree, key):
  """Random device arrays shaped like `tree` (ShapeDtypeStructs): scales 1, others N(0, 0.02)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  keys = jax.random.split(key, len(leaves))

  def fill(path, leaf, k):
    if "scale" in jax.tree_util.keystr(path):
      return jnp.ones(leaf.shape, leaf.dtype)
    return (0.02 * jax.random.normal(k, leaf.shape, jnp.float32)).astype(leaf.dtype)

  arrays = [jax.jit(fill, static_argnums=(0, 1))(p, l, k) for (p, l), k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(treedef, arrays)


def dense_batch(pairs: int, latent, channels: int, text_len: int, text_dim: int, key) -> dict:
  """A DenseDPO batch of random Wan-sized latents in stored dtypes: bf16 latents and text, int8
  labels +1, -1, 0 by latent frame, segments of 3 frames (the scaled tools' batch)."""
  ka, kb, kt = jax.random.split(key, 3)
  shape = (pairs,) + tuple(latent) + (channels,)
  t = latent[0]
  labels = jnp.tile(jnp.array([1, -1, 0], jnp.int8), t)[:t]
  return {"latent_a": jax.random.normal(ka, shape, jnp.bfloat16),
          "latent_b": jax.random.normal(kb, shape, jnp.bfloat16),
          "text_emb": jax.random.normal(kt, (pairs, text_len, text_dim), jnp.bfloat16),
          "text_mask": jnp.arange(text_len)[None].repeat(pairs, 0) < 120,
          "labels": jnp.tile(labels[None], (pairs, 1)),
          "global_label": jnp.ones((pairs,), jnp.int8),
          "segment_ids": jnp.tile((jnp.arange(t, dtype=jnp.int32) // 3)[None], (pairs, 1))}
