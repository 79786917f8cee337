"""Blockwise (flash-style) attention against the XLA reference: values, gradients, memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densedpo_jax.model.attention import attention, blockwise_attention, xla_attention
from densedpo_jax.model import VideoDiT, get_dit_config
from tests.helpers import (dit_inputs as _inputs, forward_gap_bound, gamma,
                           numpy_attention as _numpy_attention, qkv as _qkv, randomize)


@pytest.mark.parametrize("nq,nk,block", [(100, 70, 32), (64, 64, 64), (33, 129, 16)])
def test_values_and_gradients_equal_the_reference(nq, nk, block):
  q, k, v = _qkv(np.random.randint(1 << 30), nq=nq, nk=nk)
  ref = jax.nn.dot_product_attention(q, k, v, implementation="xla")
  out = blockwise_attention(q, k, v, block, block)
  want = _numpy_attention(q, k, v, np.ones((1, 1, nq, nk), bool))
  np.testing.assert_allclose(out, want, rtol=0, atol=attention_error_bound(q, k, v, block))
  w = jax.random.normal(jax.random.key(1), ref.shape)  # A random cotangent.
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * w)
  g_ref = jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v)), (0, 1, 2))(q, k, v)
  g = jax.grad(loss(lambda q, k, v: blockwise_attention(q, k, v, block, block)), (0, 1, 2))(q, k, v)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=0, atol=gradient_gap_bound(b, q, k, block))


def attention_error_bound(q, k, v, block: int) -> float:
  """Bound on |float32 attention - exact| for q `[B, Nq, H, D]`, k, v `[B, Nk, H, D]`.

  A logit q.k / sqrt(D) errs by at most gamma_D sum_i |q_i k_i| / sqrt(D) =: e; logits off by at
  most e move each softmax weight by a factor within exp(+-2e), so the weighted mean of v moves by
  at most (exp(2e) - 1) max|v|. The float32 softmax and weighted sum then round at most
  2 Nk + ceil(Nk / block) + 8 times in a row (exp, the two sums over keys, the blockwise
  rescalings, the division), each relative to sum_j p_j |v_j| <= max|v|.
  """
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  d, nk = q.shape[-1], k.shape[1]
  logit_sum = np.einsum("bnhd,bmhd->bhnm", np.abs(q), np.abs(k)).max() / np.sqrt(d)
  e = gamma(d) * logit_sum
  rounds = 2 * nk + -(-nk // block) + 8
  return float((np.expm1(2 * e) + gamma(rounds)) * np.abs(v).max())


def gradient_gap_bound(grad, q, k, block: int) -> float:
  """Bound on max|a - b| for two float32 attention backward passes that add in other orders:
  about 16 reductions (twice the forward's), the longest over max(Nq, Nk) terms plus a rescaling
  a block, each within gamma of the gradients' scale max|grad|."""
  n = max(q.shape[1], k.shape[1])
  return forward_gap_bound(float(jnp.abs(grad).max()), 1, n + -(-n // block), 16)


def test_xla_attention_equals_float64_softmax_with_a_mask_and_jax_nn_gradients():
  seed = np.random.randint(1 << 30)
  q, k, v = _qkv(seed, nq=37, nk=23)
  rng = np.random.default_rng(seed)
  mask = rng.random((2, 1, 1, 23)) < 0.6
  mask[:, :, :, 0] = True  # Every query keeps a key (the model's text masks do).
  mask = np.broadcast_to(mask, (2, 1, 37, 23))
  out = xla_attention(q, k, v, jnp.asarray(mask))
  np.testing.assert_allclose(out, _numpy_attention(q, k, v, mask), rtol=0,
                             atol=attention_error_bound(q, k, v, block=23))
  w = jax.random.normal(jax.random.key(seed), out.shape)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v, jnp.asarray(mask)) * w)
  g = jax.grad(loss(xla_attention), (0, 1, 2))(q, k, v)
  g_ref = jax.grad(loss(lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, mask=m)),
                   (0, 1, 2))(q, k, v)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=0, atol=gradient_gap_bound(b, q, k, block=23))


def test_bfloat16_inputs_stay_within_bf16_rounding():
  q, k, v = _qkv(np.random.randint(1 << 30), dtype=jnp.bfloat16)
  ref = jax.nn.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)))
  out = blockwise_attention(q, k, v, 32, 32)
  assert out.dtype == jnp.bfloat16
  # Outputs are averages of bf16 values: within a few bf16 ulps (2^-8 relative) of float32.
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=4 * 2 ** -8 * float(jnp.abs(ref).max()))


def test_memory_is_linear_in_sequence_length():
  """Compiled temp bytes of forward + backward at 4,096 tokens: the reference holds the
  [B, H, N, N] logits (and their gradient), the blockwise path a block of them."""
  q, k, v = _qkv(0, b=1, nq=4096, nk=4096, h=2, d=32)
  def temp(f):
    g = jax.jit(jax.grad(lambda q, k, v: f(q, k, v).sum(), (0, 1, 2)))
    return g.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes
  ref = temp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v))
  blocked = temp(lambda q, k, v: blockwise_attention(q, k, v, 512, 512))
  assert ref > 4096 * 4096 * 2 * 4  # At least the float32 logits.
  assert blocked < ref / 8


def test_the_model_with_blockwise_attention_equals_xla():
  seed = np.random.randint(1 << 30)
  x, t, text, mask = _inputs(seed)
  cfg = get_dit_config("tiny", width=32, depth=2, num_heads=2, text_dim=16)
  variables = VideoDiT(cfg).init(jax.random.key(0), x, t, text, mask)
  params = {"params": randomize(variables["params"], seed)}
  ref = VideoDiT(cfg).apply(params, x, t, text, mask)
  out = VideoDiT(cfg.replace(attention_impl="blockwise")).apply(params, x, t, text, mask)
  # Two float32 forwards that add in other orders; the longest reduction is the MLP's 4 * width
  # or the timestep embedding's time_freq_dim.
  tol = forward_gap_bound(float(np.abs(ref).max()), cfg.depth, max(4 * cfg.width,
                                                                   cfg.time_freq_dim))
  np.testing.assert_allclose(out, ref, rtol=0, atol=tol)


def test_splash_refuses_other_backends_with_a_clear_message():
  q, k, v = _qkv(0)
  with pytest.raises(ValueError, match="TPU only"):
    attention(q, k, v, None, "splash")
  with pytest.raises(ValueError, match="expected one of"):
    attention(q, k, v, None, "fast")
