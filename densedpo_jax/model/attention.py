"""Attention implementations: `attention(q, k, v, mask, implementation)`, the one attention call.

  xla        plain XLA ops, the reference: heads-major einsums with the softmax normalised
             after the value product; materialises the [B, heads, Nq, Nk] logits (GBs per
             layer at 32k tokens)
  cudnn      jax.nn.dot_product_attention's cuDNN flash attention (GPU, bf16 / fp16)
  blockwise  flash-style attention in plain JAX for every backend, CPU included: the keys are
             visited block by block with an online softmax, and a custom backward recomputes
             each block from the saved log-sum-exp, so memory is linear in sequence length
  splash     TPU Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention)

Shapes: `q [B, Nq, heads, D]`, `k, v [B, Nk, heads, D]` -> `[B, Nq, heads, D]`. `mask` is boolean,
broadcastable to `[B, heads, Nq, Nk]` (True = attend). The blockwise and splash paths take no mask:
masked attention (cross-attention to at most a few hundred text tokens) is small, and runs on XLA.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

IMPLEMENTATIONS = ("xla", "cudnn", "blockwise", "splash")
NEG = -1e30  # Finite "minus infinity": exp() underflows to 0 without inf - inf = NaN.


def attention(q, k, v, mask=None, implementation: str = "xla", block_q: int = 512,
              block_k: int = 512):
  """Multi-head attention by `implementation` (see the module doc).

  Under a mesh (`jax.set_mesh`) whose `sequence` axis has more than one device, the queries stay
  split over it and every device gathers the full keys and values (context parallelism; the
  backward reduce-scatters their gradients).
  """
  shards = sequence_shards()
  if shards > 1 and k.shape[1] == q.shape[1]:  # Self-attention over split tokens.
    return _context_parallel(q, k, v, mask, shards, implementation, block_q, block_k)
  return _local_attention(q, k, v, mask, implementation, block_q, block_k)


def sequence_shards() -> int:
  """Devices on the `sequence` axis of the mesh in context (1 without one)."""
  mesh = jax.sharding.get_abstract_mesh()
  return 1 if mesh.empty else dict(mesh.shape).get("sequence", 1)


def _context_parallel(q, k, v, mask, shards: int, implementation: str, block_q: int,
                      block_k: int):
  """`_local_attention` on each device's query tokens against all keys (`shard_map` over the
  `sequence` axis only; the batch and head axes stay as the compiler laid them out)."""
  n = q.shape[1]
  if n % shards:
    raise ValueError(f"context parallelism: {n} query tokens are not divisible by the mesh's "
                     f"sequence axis ({shards} devices); change the latent size or mesh.shape")
  split = P(None, "sequence")
  args, specs = (q, k, v), (split, split, split)
  if mask is not None:
    args += (mask,)
    specs += (P(None, None, "sequence") if mask.ndim == 4 and mask.shape[2] == n > 1 else P(),)

  dtype = q.dtype

  def local(q, k, v, m=None):  # Gradients of the gathered keys and values reduce-scatter back.
    k, v = (jax.lax.all_gather(x, "sequence", axis=1, tiled=True) for x in (k, v))
    q, k, v = (x.astype(dtype) for x in (q, k, v))
    return _local_attention(q, k, v, m, implementation, block_q, block_k).astype(jnp.float32)

  # The region's collectives in float32: XLA:CPU (jax 0.10) crashes promoting the bf16
  # collectives of this shard_map's backward ("Invalid binary instruction opcode copy").
  args = tuple(x.astype(jnp.float32) if x.dtype == dtype else x for x in args)
  return jax.shard_map(local, in_specs=specs, out_specs=split, axis_names={"sequence"},
                       check_vma=False)(*args).astype(dtype)


PLATFORMS = {"cudnn": "gpu", "splash": "tpu"}  # Implementations bound to one kind of device.


def check_platform(implementation: str) -> None:
  """Raises a one-line ValueError naming what to pick when `implementation` cannot run here."""
  want, here = PLATFORMS.get(implementation), jax.devices()[0].platform
  if want is not None and here != want:
    raise ValueError(f"attention_impl={implementation!r} runs on {want.upper()} only and this "
                     f"machine's devices are {here.upper()}: pass --config.model.attention_impl="
                     "blockwise (any device) or xla")


def _local_attention(q, k, v, mask, implementation: str, block_q: int, block_k: int):
  check_platform(implementation)
  if implementation == "cudnn":
    if mask is not None:  # cuDNN refuses masks that broadcast over a sequence axis.
      full = (1, 1, q.shape[1], k.shape[1])
      mask = jnp.broadcast_to(mask, jnp.broadcast_shapes(mask.shape, full))
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
  if implementation == "xla" or (mask is not None and implementation in IMPLEMENTATIONS):
    return xla_attention(q, k, v, mask)
  if implementation == "blockwise":
    # Blocks no longer than the sequences: a short sequence is not padded to a whole block.
    return blockwise_attention(q, k, v, min(block_q, q.shape[1]), min(block_k, k.shape[1]))
  if implementation == "splash":
    return splash_attention(q, k, v)
  raise ValueError(f"attention implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")


def xla_attention(q, k, v, mask=None):
  """Attention in plain XLA ops (shapes as `attention`), logits and softmax in float32.

  Heads-major einsums (batch dimensions leading, so XLA:CPU needs no transposing copies of the
  logits) and the softmax's division applied to the `[.., Nq, D]` output rather than to the
  `[.., Nq, Nk]` probabilities: forward about 3x and forward+backward 1.2x faster on CPU than
  `jax.nn.dot_product_attention`'s XLA path at [32, 256, 4, 32] (benchmarks/attention_impls.py).
  """
  heads_major = lambda x: x.transpose(0, 2, 1, 3)  # [B, heads, N, D]
  q = heads_major(q * jnp.asarray(1 / math.sqrt(q.shape[-1]), q.dtype))
  logits = jnp.einsum("bhnd,bhmd->bhnm", q, heads_major(k), preferred_element_type=jnp.float32)
  if mask is not None:
    logits = jnp.where(jnp.broadcast_to(mask, logits.shape), logits, NEG)
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
  out = jnp.einsum("bhnm,bhmd->bhnd", weights.astype(v.dtype), heads_major(v),
                   preferred_element_type=jnp.float32)
  out = out / weights.sum(-1, keepdims=True)
  return heads_major(out).astype(q.dtype)


def _to_blocks(x, size: int):
  """`[B, N, H, D]` -> `[N / size, B, size, H, D]` (N padded with zeros to a multiple of size)."""
  b, n, h, d = x.shape
  pad = -n % size
  x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
  return x.reshape(b, (n + pad) // size, size, h, d).swapaxes(0, 1)


def _from_blocks(x, n: int):
  nb, b, size = x.shape[:3]
  return x.swapaxes(0, 1).reshape((b, nb * size) + x.shape[3:])[:, :n]


def _key_valid(nk: int, block_k: int):
  """`[nk_blocks, block_k]` bool: False on the zero padding of the last key block."""
  nb = -(-nk // block_k)
  return (jnp.arange(nb * block_k) < nk).reshape(nb, block_k)


def _logits(qi, kj, valid_j, scale):
  """`[B, bq, H, D] x [B, bk, H, D]` -> float32 `[B, H, bq, bk]`, padding keys at NEG."""
  s = jnp.einsum("bqhd,bkhd->bhqk", qi, kj, preferred_element_type=jnp.float32) * scale
  return jnp.where(valid_j[None, None, None, :], s, NEG)


def _forward(q, k, v, block_q, block_k):
  b, nq, h, d = q.shape
  scale = 1.0 / math.sqrt(d)
  kb, vb, valid = _to_blocks(k, block_k), _to_blocks(v, block_k), _key_valid(k.shape[1], block_k)

  def q_block(qi):
    def kv_step(carry, kv):
      m, l, acc = carry  # [B, H, bq], [B, H, bq], [B, bq, H, D]
      kj, vj, valid_j = kv
      s = _logits(qi, kj, valid_j, scale)
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.exp(s - m_new[..., None])
      corr = jnp.exp(m - m_new)
      l = l * corr + p.sum(-1)
      pv = jnp.einsum("bhqk,bkhd->bqhd", p, vj.astype(jnp.float32))
      return (m_new, l, acc * corr.transpose(0, 2, 1)[..., None] + pv), None

    bq = qi.shape[1]
    init = (jnp.full((b, h, bq), NEG, jnp.float32), jnp.zeros((b, h, bq), jnp.float32),
            jnp.zeros((b, bq, h, d), jnp.float32))
    (m, l, acc), _ = jax.lax.scan(kv_step, init, (kb, vb, valid))
    out = acc / l.transpose(0, 2, 1)[..., None]
    return out, m + jnp.log(l)  # lse [B, H, bq]

  out, lse = jax.lax.map(q_block, _to_blocks(q, block_q))
  return _from_blocks(out, nq).astype(q.dtype), lse  # lse stays blocked: [nq_blocks, B, H, bq]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def blockwise_attention(q, k, v, block_q: int = 512, block_k: int = 512):
  """Flash-style attention (no mask): exact softmax attention, memory linear in length."""
  return _forward(q, k, v, block_q, block_k)[0]


def _fwd(q, k, v, block_q, block_k):
  out, lse = _forward(q, k, v, block_q, block_k)
  return out, (q, k, v, out, lse)


def _bwd(block_q, block_k, res, dout):
  q, k, v, out, lse = res
  nq, nk, d = q.shape[1], k.shape[1], q.shape[-1]
  scale = 1.0 / math.sqrt(d)
  f32 = lambda x: x.astype(jnp.float32)
  delta = jnp.einsum("bnhd,bnhd->bhn", f32(dout), f32(out))  # rowsum(dout * out)
  qb, dob = _to_blocks(q, block_q), _to_blocks(dout, block_q)
  deltab = _to_blocks(delta.transpose(0, 2, 1)[..., None], block_q)[..., 0]  # [nqb, B, bq, H]
  kb, vb, valid = _to_blocks(k, block_k), _to_blocks(v, block_k), _key_valid(nk, block_k)

  def probs(qi, kj, valid_j, lse_i):
    return jnp.exp(_logits(qi, kj, valid_j, scale) - lse_i[..., None])  # [B, H, bq, bk]

  def dscores(p, do_i, vj, delta_i):
    dp = jnp.einsum("bqhd,bkhd->bhqk", f32(do_i), f32(vj))
    return p * (dp - delta_i.transpose(0, 2, 1)[..., None])

  def dq_block(args):  # One query block against every key block.
    qi, do_i, lse_i, delta_i = args
    def step(dq, kv):
      kj, vj, valid_j = kv
      ds = dscores(probs(qi, kj, valid_j, lse_i), do_i, vj, delta_i)
      return dq + jnp.einsum("bhqk,bkhd->bqhd", ds, f32(kj)) * scale, None
    return jax.lax.scan(step, jnp.zeros(qi.shape, jnp.float32), (kb, vb, valid))[0]

  def dkv_block(args):  # One key block against every query block.
    kj, vj, valid_j = args
    def step(carry, qs):
      dk, dv = carry
      qi, do_i, lse_i, delta_i = qs
      p = probs(qi, kj, valid_j, lse_i)
      ds = dscores(p, do_i, vj, delta_i)
      dv = dv + jnp.einsum("bhqk,bqhd->bkhd", p, f32(do_i))
      dk = dk + jnp.einsum("bhqk,bqhd->bkhd", ds, f32(qi)) * scale
      return (dk, dv), None
    zeros = jnp.zeros(kj.shape, jnp.float32)
    return jax.lax.scan(step, (zeros, zeros), (qb, dob, lse, deltab))[0]

  dq = _from_blocks(jax.lax.map(dq_block, (qb, dob, lse, deltab)), nq)
  dk, dv = jax.lax.map(dkv_block, (kb, vb, valid))
  return dq.astype(q.dtype), _from_blocks(dk, nk).astype(k.dtype), _from_blocks(dv, nk).astype(v.dtype)


blockwise_attention.defvjp(_fwd, _bwd)


def splash_attention(q, k, v):
  """TPU splash attention (Pallas), full (non-causal) mask; TPU only."""
  check_platform("splash")
  from jax.experimental.pallas.ops.tpu.splash_attention import (splash_attention_kernel as sk,
                                                                splash_attention_mask as sm)
  _, nq, h, d = q.shape
  mask = sm.MultiHeadMask([sm.FullMask((nq, k.shape[1])) for _ in range(h)])
  kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1)
  to_heads = lambda x: x.transpose(0, 2, 1, 3)  # [B, heads, N, D]
  out = jax.vmap(kernel)(to_heads(q) / math.sqrt(d), to_heads(k), to_heads(v))
  return out.transpose(0, 2, 1, 3)
