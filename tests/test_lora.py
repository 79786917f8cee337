"""LoRA: a fresh adapter is a no-op, `lora_enabled=False` is the base, merging is exact."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from densedpo_jax.model import LoRAConfig, VideoDiT, merge_lora
from tests.helpers import SMALL, lora_setup as _setup, randomize


def test_fresh_adapter_is_the_base_model():
  cfg, model, params, lora, inputs = _setup(np.random.randint(1 << 20))
  with_adapter = model.apply({"params": params, "lora": lora}, *inputs)
  base_only = VideoDiT(cfg.replace(lora=LoRAConfig())).apply({"params": params}, *inputs)
  np.testing.assert_array_equal(np.asarray(with_adapter), np.asarray(base_only))


def test_disabled_adapter_is_the_base_model():
  cfg, model, params, lora, inputs = _setup(np.random.randint(1 << 20))
  lora = randomize(lora, 7)
  enabled = model.apply({"params": params, "lora": lora}, *inputs)
  disabled = model.apply({"params": params, "lora": lora}, *inputs, lora_enabled=False)
  base_only = VideoDiT(cfg.replace(lora=LoRAConfig())).apply({"params": params}, *inputs)
  np.testing.assert_array_equal(np.asarray(disabled), np.asarray(base_only))
  assert float(jnp.abs(enabled - disabled).max()) > 1e-3


@pytest.mark.parametrize("scan", [False, True])
def test_merged_model_equals_adapter_model(scan):
  cfg, model, params, lora, inputs = _setup(np.random.randint(1 << 20))
  if scan:
    from densedpo_jax.model.layout import stack_blocks
    cfg = cfg.replace(scan_layers=True)
    model = VideoDiT(cfg)
    params, lora = stack_blocks(params, cfg.depth), stack_blocks(lora, cfg.depth)
  lora = randomize(lora, 9, scale=0.2)
  adapted = model.apply({"params": params, "lora": lora}, *inputs)
  merged = merge_lora(params, lora, cfg)
  plain = VideoDiT(cfg.replace(lora=LoRAConfig())).apply({"params": merged}, *inputs)
  np.testing.assert_allclose(np.asarray(plain), np.asarray(adapted), rtol=1e-4, atol=1e-5)
  # Independent check of one folded kernel: W + (alpha / rank) * A @ B in float64.
  blk = ("blocks",) if scan else ("block_0",)
  path = blk + ("mlp", "fc_in")
  flat_p, flat_l = traverse_util.flatten_dict(params), traverse_util.flatten_dict(lora)
  want = np.asarray(flat_p[path + ("kernel",)], np.float64) + 2.0 * np.matmul(
      np.asarray(flat_l[path + ("lora_a",)], np.float64), np.asarray(flat_l[path + ("lora_b",)], np.float64))
  np.testing.assert_allclose(traverse_util.flatten_dict(merged)[path + ("kernel",)], want, rtol=1e-5, atol=1e-6)


def test_gradients_flow_only_into_the_adapter():
  cfg, model, params, lora, inputs = _setup(np.random.randint(1 << 20))
  lora = randomize(lora, 3)

  def loss(lora_tree, enabled=True):
    v = model.apply({"params": params, "lora": lora_tree}, *inputs, lora_enabled=enabled)
    return jnp.mean(v ** 2)

  grads = jax.grad(loss)(lora)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(lora)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads))
  # The reference (adapter off) gives the adapter no gradient at all.
  ref_grads = jax.grad(lambda l: loss(l, enabled=False))(lora)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(ref_grads))
  # And the base stays out of the adapter's collection.
  assert not any("kernel" in p for p in traverse_util.flatten_dict(lora))


def test_targets_select_the_adapted_projections():
  _, _, _, lora, _ = _setup(0, targets=("cross_k", "mlp_out"))
  paths = {p[:-1] for p in traverse_util.flatten_dict(lora)}
  assert paths == {(f"block_{i}",) + sub for i in range(SMALL["depth"])
                   for sub in [("cross_attn", "k"), ("mlp", "fc_out")]}
  with pytest.raises(ValueError, match="unknown"):
    LoRAConfig(rank=2, targets=("qkv",))
