"""cuDNN attention on a GPU: masked values and gradients, and VideoDiT with it in bf16.

Skipped without a GPU (CI has none); `bash benchmarks/gpu_checks.sh` runs this file first.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densedpo_jax.model import VideoDiT, get_dit_config
from densedpo_jax.model.attention import attention, xla_attention
from tests.helpers import numpy_attention as _numpy_attention, qkv as _qkv
from tests.helpers import randomize

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (cuDNN)")
BF16_ULP = 2.0 ** -8


def _key_mask(seed, b: int, nk: int) -> np.ndarray:
  """A text mask as the model passes it, `[B, 1, 1, Nk]`: a random number of leading tokens."""
  lengths = np.random.default_rng(seed).integers(1, nk + 1, (b, 1, 1, 1))
  return np.arange(nk) < lengths


def test_cudnn_with_a_key_mask_equals_float64_softmax():
  seed = np.random.randint(1 << 30)
  q, k, v = _qkv(seed, nq=256, nk=32, h=4, d=64, dtype=jnp.bfloat16)
  mask = _key_mask(seed, 2, 32)
  out = attention(q, k, v, jnp.asarray(mask), "cudnn")
  assert out.dtype == jnp.bfloat16
  ref = _numpy_attention(q, k, v, np.broadcast_to(mask, (2, 1, 256, 32)))
  print(f"cuDNN masked forward: max error / max |ref| = "
        f"{np.abs(np.asarray(out, np.float64) - ref).max() / np.abs(ref).max():.2e}")
  np.testing.assert_allclose(np.asarray(out, np.float32), ref,
                             atol=4 * BF16_ULP * np.abs(ref).max())


def test_cudnn_gradients_with_a_key_mask_equal_float32_xla():
  seed = np.random.randint(1 << 30)
  q, k, v = _qkv(seed, nq=256, nk=32, h=4, d=64, dtype=jnp.bfloat16)
  mask = jnp.asarray(_key_mask(seed, 2, 32))
  w = jax.random.normal(jax.random.key(seed), q.shape)
  grads = jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, mask, "cudnn").astype(jnp.float32)
                                           * w), (0, 1, 2))(q, k, v)
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  with jax.default_matmul_precision("highest"):
    refs = jax.grad(lambda q, k, v: jnp.sum(xla_attention(q, k, v, mask) * w), (0, 1, 2))(*f32)
  for name, g, r in zip("qkv", grads, refs):
    scale = float(jnp.abs(r).max())
    err = float(jnp.abs(g.astype(jnp.float32) - r).max()) / scale
    print(f"cuDNN masked d{name}: max error / max |grad| = {err:.2e}")
    assert err < 8 * BF16_ULP, f"d{name}: max error {err:.2e} of max |grad| {scale:.2e}"


def test_videodit_in_bf16_with_cudnn_equals_float32_xla():
  seed = np.random.randint(1 << 30)
  keys = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(keys[0], (2, 4, 8, 8, 3))
  t = jax.random.uniform(keys[1], (2,))
  text = jax.random.normal(keys[2], (2, 8, 16))
  text_mask = jnp.asarray(np.arange(8) < np.array([[3], [8]]))
  cfg = get_dit_config("tiny", width=64, depth=2, num_heads=2, text_dim=16)
  params = {"params": randomize(VideoDiT(cfg).init(jax.random.key(0), x, t, text, text_mask)
                                ["params"], seed)}
  with jax.default_matmul_precision("highest"):
    ref = VideoDiT(cfg).apply(params, x, t, text, text_mask)
  out = VideoDiT(cfg.replace(dtype="bfloat16", attention_impl="cudnn")).apply(
      params, x, t, text, text_mask)
  err = float(jnp.abs(out.astype(jnp.float32) - ref).max() / jnp.abs(ref).max())
  print(f"VideoDiT bf16 cuDNN vs float32 XLA: max error / max |ref| = {err:.2e}")
  assert err < 12 * BF16_ULP, f"bf16 cuDNN model vs float32 XLA: max error {err:.2e}"
