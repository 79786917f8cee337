"""Mesh construction and logical-axis shardings on 8 fake CPU devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from densedpo_jax.training import sharding
from densedpo_jax.model import LoRAConfig, VideoDiT, get_dit_config
from tests.helpers import forward_gap_bound


def test_mesh_shape_resolution():
  assert sharding.resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1, 1)
  assert sharding.resolve_mesh_shape((2, 2, 2), 8) == (2, 2, 2, 1)  # sequence 1 when left out.
  assert sharding.resolve_mesh_shape((1, 2, 1, -1), 8) == (1, 2, 1, 4)
  with pytest.raises(ValueError, match="needs 4 devices; 8"):
    sharding.resolve_mesh_shape((2, 2, 1), 8)
  with pytest.raises(ValueError, match="at most one axis"):
    sharding.resolve_mesh_shape((-1, -1, 1), 8)
  mesh = sharding.create_mesh((2, 2, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}
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


def _lora_grads_on_mesh(mesh_shape, impl, seed, dtype=None):
  """(output, LoRA gradients of sum(v * w), compiled temp bytes per device) of a scanned tiny DiT
  on a mesh of the first prod(mesh_shape) devices, rules bound."""
  mesh = sharding.create_mesh(mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
  cfg = get_dit_config("tiny", width=32, depth=2, num_heads=2, text_dim=16, scan_layers=True,
                       attention_impl=impl, lora=LoRAConfig(rank=4), dtype=dtype or "float32")
  model = VideoDiT(cfg)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((2, 4, 16, 16, 3)), jnp.float32)  # 64 tokens a video.
  t = jnp.asarray(rng.random(2), jnp.float32)
  text = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  w = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  variables = nn.unbox(model.init(jax.random.key(0), x, t, text, mask))
  params = jax.tree_util.tree_map(  # Non-zero everywhere: zero-initialised gates would hide paths.
      lambda a: a + 0.1 * jnp.asarray(rng.standard_normal(a.shape), a.dtype), variables)

  def loss(lora, params):
    v = model.apply({"params": params["params"], "lora": lora}, x, t, text, mask)
    return jnp.sum(v * w), v

  step = jax.jit(jax.grad(loss, has_aux=True))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
    compiled = step.lower(params["lora"], params).compile()
    grads, v = compiled(params["lora"], params)
  return v, grads, compiled


@pytest.mark.parametrize("impl", ["xla", "blockwise"])
def test_context_parallelism_equals_one_device_and_gathers_keys(impl):
  seed = np.random.randint(1 << 30)
  v1, g1, data_only = _lora_grads_on_mesh((2, 1, 1, 1), impl, seed)  # A video a device.
  v4, g4, context = _lora_grads_on_mesh((2, 1, 1, 4), impl, seed)  # A quarter of its tokens.
  # Two float32 forwards that add in other orders (gathered keys, another attention order);
  # the longest reduction is the timestep embedding's 256 frequencies (the MLP's has 128).
  tol = forward_gap_bound(float(jnp.abs(v1).max()), depth=2, reduction=256)
  np.testing.assert_allclose(v4, v1, rtol=0, atol=tol)
  for a, b in zip(jax.tree_util.tree_leaves(g4), jax.tree_util.tree_leaves(g1)):  # Backward: 2x.
    np.testing.assert_allclose(a, b, rtol=0, atol=forward_gap_bound(float(jnp.abs(b).max()), 2,
                                                                     256, 16))
  hlo = context.as_text()
  assert "all-gather" in hlo and "all-gather" not in data_only.as_text()
  if impl == "xla":  # Self-attention logits [1 video, 2 heads, queries, keys]: 16 x 64, not 64^2.
    assert "f32[1,2,16,64]" in hlo and "f32[1,2,64,64]" not in hlo
    assert "f32[1,2,64,64]" in data_only.as_text()
    temp = lambda c: c.memory_analysis().temp_size_in_bytes
    assert temp(context) < 0.5 * temp(data_only)


@pytest.mark.e2e
def test_context_parallelism_in_bfloat16_compiles_and_stays_within_bf16_rounding():
  """bf16 compute: the shard_map's collectives run in float32 (XLA:CPU crashed on bf16 ones)."""
  seed = np.random.randint(1 << 30)
  run = lambda mesh, dtype: np.asarray(_lora_grads_on_mesh(mesh, "xla", seed, dtype)[0], np.float32)
  v1, v4, v32 = run((2, 1, 1, 1), "bfloat16"), run((2, 1, 1, 4), "bfloat16"), run((2, 1, 1, 1), None)
  scale = float(np.abs(v32).max())
  # Within a few bf16 roundings of float32, as the unsplit bf16 run is.
  spread = float(np.abs(v1 - v32).max())
  assert float(np.abs(v4 - v32).max()) < 2 * spread + 2 ** -7 * scale


def test_context_parallelism_refuses_indivisible_tokens():
  from densedpo_jax.model.attention import attention
  mesh = sharding.create_mesh((1, 1, 1, 8))
  q = jnp.zeros((1, 12, 2, 8))
  with jax.set_mesh(mesh), pytest.raises(ValueError, match="12 query tokens are not divisible"):
    jax.jit(lambda q: attention(q, q, q)).lower(q)
