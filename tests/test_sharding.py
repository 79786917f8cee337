"""Mesh construction and logical-axis shardings on 8 fake CPU devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from densedpo_jax import sharding
from densedpo_jax.model import LoRAConfig, VideoDiT, get_dit_config


def test_mesh_shape_resolution():
  assert sharding.resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
  assert sharding.resolve_mesh_shape((2, 2, 2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="needs 4 devices; 8"):
    sharding.resolve_mesh_shape((2, 2, 1), 8)
  with pytest.raises(ValueError, match="at most one axis"):
    sharding.resolve_mesh_shape((-1, -1, 1), 8)
  mesh = sharding.create_mesh((2, 2, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert len(set(d.id for d in mesh.devices.flat)) == 8


def test_state_is_created_sharded_by_logical_rules():
  mesh = sharding.create_mesh((2, 2, 2))
  cfg = get_dit_config("tiny", width=32, depth=2, num_heads=2, text_dim=16, scan_layers=True,
                       lora=LoRAConfig(rank=4))
  model = VideoDiT(cfg)
  x, t = jnp.zeros((1, 4, 8, 8, 3)), jnp.zeros((1,))
  text, mask = jnp.zeros((1, 5, 16)), jnp.ones((1, 5), bool)
  init = lambda key: model.init(key, x, t, text, mask)
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.logical_shardings(abstract, mesh)
  variables = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(jax.random.key(0))
  fc_in = variables["params"]["blocks"]["mlp"]["fc_in"]["kernel"]  # ('layers', 'embed', 'mlp')
  assert fc_in.shape == (2, 32, 128)
  assert fc_in.sharding.spec == P(None, "fsdp", "tensor")
  # Each device holds a quarter of the kernel: embed / 2 (fsdp) x mlp / 2 (tensor).
  assert {s.data.shape for s in fc_in.addressable_shards} == {(2, 16, 64)}
  lora_b = variables["lora"]["blocks"]["self_attn"]["q"]["lora_b"]  # (layers, None, heads)
  assert lora_b.sharding.spec == P(None, None, "tensor")
  # A dim that the mesh axis does not divide falls back to replication (patch_dim = 48 -> fine,
  # null_text has no logical name).
  assert variables["params"]["null_text"].sharding.spec == P(None)
  # Values equal an unsharded init.
  plain = nn.unbox(init(jax.random.key(0)))
  np.testing.assert_array_equal(np.asarray(fc_in), np.asarray(plain["params"]["blocks"]["mlp"]["fc_in"]["kernel"]))


def test_fit_replicates_indivisible_dims():
  mesh = sharding.create_mesh((2, 2, 2))
  assert sharding._fit(P("fsdp", "tensor"), (6, 3), mesh) == P("fsdp", None)
  assert sharding._fit(P(("data", "fsdp")), (6,), mesh) == P(None)
  assert sharding._fit(P(("data", "fsdp")), (8,), mesh) == P(("data", "fsdp"))


def test_shard_batch_splits_over_data_and_fsdp():
  mesh = sharding.create_mesh((2, 2, 2))
  batch = {"latent": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "id": np.array(["a"] * 8)}
  placed = sharding.shard_batch(batch, mesh)
  assert set(placed) == {"latent"}
  assert placed["latent"].sharding.spec == P(("data", "fsdp"))
  assert {s.data.shape for s in placed["latent"].addressable_shards} == {(2, 3)}
  np.testing.assert_array_equal(np.asarray(placed["latent"]), batch["latent"])


def test_shard_batch_keeps_stored_dtypes_and_drops_strings():
  import ml_dtypes
  mesh = sharding.create_mesh((2, 2, 2))
  batch = {"latent": np.ones((8, 2), ml_dtypes.bfloat16), "mask": np.ones((8,), bool),
           "id": np.asarray([f"x{i}" for i in range(8)])}
  out = sharding.shard_batch(batch, mesh)
  assert sorted(out) == ["latent", "mask"] and out["latent"].dtype == jnp.bfloat16


def _forward_memory(rules):
  """Compiled per-device temp bytes of a forward pass on an FSDP mesh of 8 under `rules`."""
  from densedpo_jax.model.layers import TOKENS
  mesh = sharding.create_mesh((1, 8, 1))
  cfg = get_dit_config("tiny", width=64, depth=2, num_heads=2, text_dim=16)
  model = VideoDiT(cfg)
  x, t = jnp.zeros((16, 4, 16, 16, 3)), jnp.zeros((16,))
  text, mask = jnp.zeros((16, 4, 16)), jnp.ones((16, 4), bool)
  params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, text, mask)))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    lowered = jax.jit(model.apply).lower(params, x, t, text, mask)
  return lowered.as_text().count("sharding_constraint"), lowered.compile().memory_analysis()


def test_activation_rules_act_when_bound():
  n, sharded = _forward_memory(sharding.DEFAULT_RULES)
  replicated_rules = [(k, None if k == "act_batch" else v) for k, v in sharding.DEFAULT_RULES]
  _, replicated = _forward_memory(replicated_rules)
  none, _ = _forward_memory(())
  assert n > 0 and none == 0  # Constraints exist only with rules bound.
  # Tokens split over the 8 devices need far less temporary memory per device than replicated.
  assert sharded.temp_size_in_bytes < 0.5 * replicated.temp_size_in_bytes
