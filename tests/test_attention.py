"""Blockwise (flash-style) attention against the XLA reference: values, gradients, memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densedpo_jax.model.attention import attention, blockwise_attention, xla_attention
from densedpo_jax.model import VideoDiT, get_dit_config
from tests.test_model import _inputs, randomize


def _qkv(seed, b=2, nq=100, nk=70, h=3, d=16, dtype=jnp.float32):
  k = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(kk, (b, n, h, d), dtype) for kk, n in zip(k, (nq, nk, nk)))


@pytest.mark.parametrize("nq,nk,block", [(100, 70, 32), (64, 64, 64), (33, 129, 16)])
def test_values_and_gradients_equal_the_reference(nq, nk, block):
  q, k, v = _qkv(np.random.randint(1 << 30), nq=nq, nk=nk)
  ref = jax.nn.dot_product_attention(q, k, v, implementation="xla")
  out = blockwise_attention(q, k, v, block, block)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.key(1), ref.shape)  # A random cotangent.
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * w)
  g_ref = jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v)), (0, 1, 2))(q, k, v)
  g = jax.grad(loss(lambda q, k, v: blockwise_attention(q, k, v, block, block)), (0, 1, 2))(q, k, v)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


def _numpy_attention(q, k, v, mask):
  """float64 softmax attention, `[B, N, H, D]` layout, `mask [B, 1, Nq, Nk]` (True = attend)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum("bnhd,bmhd->bhnm", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask, logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhnm,bmhd->bnhd", p, v)


def test_xla_attention_equals_float64_softmax_with_a_mask_and_jax_nn_gradients():
  seed = np.random.randint(1 << 30)
  q, k, v = _qkv(seed, nq=37, nk=23)
  rng = np.random.default_rng(seed)
  mask = rng.random((2, 1, 1, 23)) < 0.6
  mask[:, :, :, 0] = True  # Every query keeps a key (the model's text masks do).
  mask = np.broadcast_to(mask, (2, 1, 37, 23))
  out = xla_attention(q, k, v, jnp.asarray(mask))
  np.testing.assert_allclose(out, _numpy_attention(q, k, v, mask), rtol=1e-5, atol=1e-6)
  w = jax.random.normal(jax.random.key(seed), out.shape)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v, jnp.asarray(mask)) * w)
  g = jax.grad(loss(xla_attention), (0, 1, 2))(q, k, v)
  g_ref = jax.grad(loss(lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, mask=m)),
                   (0, 1, 2))(q, k, v)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


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
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_splash_refuses_other_backends_with_a_clear_message():
  q, k, v = _qkv(0)
  with pytest.raises(ValueError, match="TPU only"):
    attention(q, k, v, None, "splash")
  with pytest.raises(ValueError, match="expected one of"):
    attention(q, k, v, None, "fast")
