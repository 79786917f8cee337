"""Model variants of the DPO step, timed against today's model in one process, steps interleaved.

    python benchmarks/step_variants.py                        # tiny, every variant, 10 rounds
    python benchmarks/step_variants.py --preset mid --rounds 5 --variants fused_qkv

The step is `benchmarks/vs_pytorch.py`'s (Flow-DPO, LoRA rank 16 on every projection, one
device). A variant swaps one building block while the step is traced, and leaves the rest as is:

  fused_qkv    self-attention's q, k and v as one matmul on concatenated kernels, with one
               concatenated LoRA-A (x @ [A_q A_k A_v]); cross-attention's k and v likewise
  merged_lora  the adapter folded into the kernel inside the step, x @ (W + s A B): one
               [in, out] weight-gradient dot instead of four rank-r products
  dots_3d      the projections' dots on `[B, N, in]` tokens as they come, as before session 4
               (today's `LoRADense` flattens them to `[B*N, in]` first, so that XLA:CPU's
               weight-gradient dots contract one axis and need no transposing copies)

Each row prints the median step time and its ratio to today's model; on a shared machine only
these ratios, taken in one run, are comparable. The first two are not in the model: at the tiny
shape neither was faster than the drift between runs (docs/performance.md).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # For configs/.
from benchmarks.train_step import OursStep, time_steps  # noqa: E402
from benchmarks.vs_pytorch import PRESETS, make_config  # noqa: E402
from densedpo_jax import host_memory  # noqa: E402
from densedpo_jax.model import dit, layers  # noqa: E402
from densedpo_jax.model.attention import attention  # noqa: E402
from densedpo_jax.model.lora import LoRADense  # noqa: E402


class MergedLoRADense(LoRADense):
  """`LoRADense` computing `x @ (W + scale * A @ B) + b` (same variables, same function)."""

  @nn.compact
  def __call__(self, x):
    kernel, bias, lora_a, lora_b = _variables(self, x.shape[-1])
    lead, x = x.shape[:-1], x.reshape(-1, x.shape[-1]).astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    if lora_a is not None and self.lora_enabled:
      kernel = kernel + self.lora.scale * jnp.dot(lora_a, lora_b).astype(self.dtype)
    y = jnp.dot(x, kernel)
    if bias is not None:
      y = y + bias.astype(self.dtype)
    return y.reshape(lead + (self.features,))


class Dots3dLoRADense(LoRADense):
  """`LoRADense` with its dots on the unflattened `[..., in]` tokens (same variables, same
  function)."""

  @nn.compact
  def __call__(self, x):
    kernel, bias, lora_a, lora_b = _variables(self, x.shape[-1])
    x = x.astype(self.dtype)
    y = jnp.dot(x, kernel.astype(self.dtype))
    if bias is not None:
      y = y + bias.astype(self.dtype)
    if lora_a is not None and self.lora_enabled:
      low = jnp.dot(x, lora_a.astype(self.dtype))
      y = y + self.lora.scale * jnp.dot(low, lora_b.astype(self.dtype))
    return y


def _variables(dense: LoRADense, fan_in: int):
  """`(kernel [in, out], bias [out] or None, lora_a [in, r] or None, lora_b [r, out] or None)`
  of a `LoRADense`, created in `LoRADense`'s order (so initialisation draws the same values)."""
  kernel = dense.param("kernel", nn.with_logical_partitioning(dense.kernel_init, dense.axes),
                       (fan_in, dense.features), dense.param_dtype)
  bias = None
  if dense.use_bias:
    bias = dense.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, dense.axes[1:]),
                       (dense.features,), dense.param_dtype)
  if not (dense.use_lora and dense.lora.rank > 0):
    return kernel, bias, None, None
  return (kernel, bias) + dense.adapter(fan_in)


class _Projection(LoRADense):
  """The variables of one attention projection (`_variables`), returned instead of applied."""

  @nn.compact
  def __call__(self, fan_in: int):
    return _variables(self, fan_in)


def _fused_projections(x, projections, lora_enabled: bool, scale: float):
  """`x [B, N, in]` through several projections as one matmul (and one LoRA-A product)."""
  lead, x = x.shape[:-1], x.reshape(-1, x.shape[-1])
  kernel = jnp.concatenate([p[0] for p in projections], axis=1)
  outs = jnp.split(x @ kernel + jnp.concatenate([p[1] for p in projections]),
                   len(projections), axis=1)
  if lora_enabled and projections[0][2] is not None:
    low = x @ jnp.concatenate([p[2] for p in projections], axis=1)
    lows = jnp.split(low, len(projections), axis=1)
    outs = [o + scale * (lo @ p[3]) for o, lo, p in zip(outs, lows, projections)]
  return [o.reshape(lead + (o.shape[-1],)) for o in outs]


class FusedQKVAttention(layers.Attention):
  """`layers.Attention` with q, k and v (cross-attention: k and v) in one matmul."""

  @nn.compact
  def __call__(self, x, context, mask=None, rope=None):
    cfg, p = self.cfg, self.prefix
    proj = lambda name, src: _Projection(
        cfg.width, ("embed", "heads") if name != "out" else ("heads", "embed"), lora=cfg.lora,
        use_lora=cfg.lora.applies_to(f"{p}_{name}"), name=name)(src.shape[-1])
    fused = lambda src, names: _fused_projections(src, [proj(n, src) for n in names],
                                                  self.lora_enabled, cfg.lora.scale)
    heads = lambda y: y.reshape(y.shape[:2] + (cfg.num_heads, cfg.head_dim))
    if p == "self":
      q, k, v = fused(x, ("q", "k", "v"))
    else:
      (q,), (k, v) = fused(x, ("q",)), fused(context, ("k", "v"))
    q, k, v = heads(q), heads(k), heads(v)
    q, k = nn.RMSNorm(name="q_norm")(q), nn.RMSNorm(name="k_norm")(k)
    if rope is not None:
      q, k = layers.apply_rope(q, *rope), layers.apply_rope(k, *rope)
    out = attention(q, k, v, mask, cfg.attention_impl)
    (out,) = fused(out.reshape(out.shape[:2] + (cfg.width,)), ("out",))
    return out


@contextlib.contextmanager
def variant(name: str):
  """Swaps the building block of variant `name` into the model while the step is traced."""
  saved = layers.LoRADense, dit.Attention
  if name == "merged_lora":
    layers.LoRADense = MergedLoRADense
  elif name == "dots_3d":
    layers.LoRADense = Dots3dLoRADense
  elif name == "fused_qkv":
    dit.Attention = FusedQKVAttention
  try:
    yield
  finally:
    layers.LoRADense, dit.Attention = saved


VARIANTS = ("today", "fused_qkv", "merged_lora", "dots_3d")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS[1:]), choices=VARIANTS[1:])
  parser.add_argument("--rounds", type=int, default=10, help="timed steps a variant (median)")
  args = parser.parse_args()
  host_memory.retain_freed_memory()
  print(host_memory.describe(), flush=True)
  _, latent, text, batch = PRESETS[args.preset]
  steps = {}
  for name in ("today",) + tuple(args.variants):
    with variant(name):
      steps[name] = OursStep(make_config(args.preset, "flow_dpo"), latent, text, batch)
      steps[name]()  # Traced and compiled here, with the variant's blocks.
  times = time_steps(steps, args.rounds)
  print(f"\n{args.preset}, Flow-DPO on {batch} pairs, {jax.devices()[0].device_kind}, "
        f"jax {jax.__version__}, median of {args.rounds} interleaved steps\n")
  print("| variant | step ms | / today |\n|---|---|---|")
  for name, seconds in times.items():
    print(f"| {name} | {seconds * 1e3:,.0f} | {seconds / times['today']:.3f} |")


if __name__ == "__main__":
  main()
