"""Attention implementations on this backend: error against a float32 reference and time.

    python -m benchmarks.attention_impls               # Wan 1.3B heads (12 x 128), bf16
    python -m benchmarks.attention_impls --tokens 256 --batch 32 --heads 4 --head_dim 32 \
        --dtype float32 --impls jax.nn xla blockwise   # CPU, the tiny preset's attention

`jax.nn` is `jax.nn.dot_product_attention`'s XLA path, which `xla` replaced. For each length:
forward and forward+backward (gradients of sum(out * cotangent) with respect to q, k and v
together) of `model.attention.attention` per implementation, the median of `--repeats` timed
calls after a warm-up, and the relative error ||out - ref|| / ||ref|| of the output and of
dq against `jax.nn.dot_product_attention` run in float32 on the same (rounded) inputs. FLOPs
are the two attention matmuls: 4 N^2 D per head forward; forward+backward 3.5x that (the flash backward
recomputes the logits).
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks.timing import median_seconds
from densedpo_jax.training import host_memory
from densedpo_jax.model.attention import attention


def _call(impl: str):
  """`(q, k, v) -> out` of one of our implementations, or of `jax.nn`'s XLA path ('jax.nn')."""
  if impl == "jax.nn":
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
  return lambda q, k, v: attention(q, k, v, implementation=impl)


def _rel(x, ref) -> float:
  x, ref = x.astype(jnp.float32), ref.astype(jnp.float32)
  return float(jnp.linalg.norm(x - ref) / jnp.linalg.norm(ref))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 32760])
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--head_dim", type=int, default=128)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--impls", nargs="+", default=["xla", "cudnn", "blockwise"])
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  host_memory.retain_freed_memory()
  print(host_memory.describe(), flush=True)
  dtype = jnp.dtype(args.dtype)

  rows = []
  for n in args.tokens:
    keys = jax.random.split(jax.random.key(n), 4)
    shape = (args.batch, n, args.heads, args.head_dim)
    q, k, v, do = (jax.random.normal(kk, shape, jnp.float32).astype(dtype) for kk in keys)
    loss = lambda impl: lambda q, k, v: jnp.sum(_call(impl)(q, k, v).astype(jnp.float32) * do.astype(
        jnp.float32))
    f32 = lambda x: x.astype(jnp.float32)
    ref_out = ref_dq = None
    if n <= 8192:  # The float32 XLA reference materialises N^2 logits a head.
      ref_out = jax.jit(_call("jax.nn"))(f32(q), f32(k), f32(v))
      ref_dq = jax.jit(jax.grad(loss("jax.nn"), argnums=(0, 1, 2)))(f32(q), f32(k), f32(v))[0]
    flops = 4 * args.batch * args.heads * n * n * args.head_dim
    for impl in args.impls:
      if impl in ("xla", "jax.nn") and n > 8192:
        continue  # GBs of logits; the point of the other implementations.
      try:
        fwd = jax.jit(_call(impl))
        bwd = jax.jit(jax.grad(loss(impl), argnums=(0, 1, 2)))
        t_fwd = median_seconds(lambda: fwd(q, k, v), args.repeats)
        t_bwd = median_seconds(lambda: bwd(q, k, v), args.repeats)
        err_out = _rel(fwd(q, k, v), ref_out) if ref_out is not None else float("nan")
        err_dq = _rel(bwd(q, k, v)[0], ref_dq) if ref_dq is not None else float("nan")
      except Exception as e:  # noqa: BLE001  (an implementation this backend lacks: say so)
        print(f"[{impl} @ {n}] unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        continue
      rows.append((n, impl, t_fwd, t_bwd, flops, err_out, err_dq))
      print(f"[{impl} @ {n}] fwd {t_fwd * 1e3:.2f} ms, fwd+bwd {t_bwd * 1e3:.2f} ms", flush=True)

  print(f"\ndevice: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__};"
        f" [B={args.batch}, N, heads={args.heads}, D={args.head_dim}] {dtype.name}")
  head = ("tokens", "impl", "fwd ms", "fwd TFLOP/s", "fwd+bwd ms", "fwd+bwd TFLOP/s",
          "out rel err", "dq rel err")
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for n, impl, t_fwd, t_bwd, flops, err_out, err_dq in rows:
    print(f"| {n} | {impl} | {t_fwd * 1e3:.2f} | {flops / t_fwd / 1e12:.3g} | {t_bwd * 1e3:.2f} | "
          f"{3.5 * flops / t_bwd / 1e12:.3g} | {err_out:.1e} | {err_dq:.1e} |")


if __name__ == "__main__":
  main()
