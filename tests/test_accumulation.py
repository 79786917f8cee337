"""Gradient accumulation on the fake 8-device mesh: micro-batches stay sharded over the batch axes
and the accumulated DenseDPO / Flow-DPO loss and gradients equal the full batch's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from densedpo_jax.training import sharding, train_step
from densedpo_jax.training.builders import model_config
from densedpo_jax.model import build
from tests.helpers import randomize
from tests.helpers import tiny_config

B, T, H, W, C, L, D = 16, 4, 8, 8, 3, 4, 16


def _setup(loss, seed):
  config = tiny_config(loss, "unused")
  model = build(model_config(config))
  rng = np.random.default_rng(seed)
  x = jnp.zeros((1, T, H, W, C))
  variables = model.init(jax.random.key(seed), x, jnp.zeros((1,)), jnp.zeros((1, L, D)),
                         jnp.ones((1, L), bool))
  params, lora = randomize(variables["params"], seed), randomize(variables["lora"], seed + 1)
  labels = rng.choice([-1, 0, 1], size=(B, T)).astype(np.int8)
  labels[::4] = 0  # Rows 0, 4, 8, 12: micro-batch 0 of 4 (one row of each device) is all ties.
  batch = {"latent_a": rng.normal(size=(B, T, H, W, C)).astype(np.float32),
           "latent_b": rng.normal(size=(B, T, H, W, C)).astype(np.float32),
           "text_emb": rng.normal(size=(B, L, D)).astype(np.float32),
           "text_mask": np.ones((B, L), bool), "labels": labels,
           "global_label": np.where(np.arange(B) % 4 == 0, 0, rng.choice([-1, 1], B)).astype(np.int8)}
  return config, model, params, lora, batch


@pytest.mark.e2e
@pytest.mark.parametrize("loss", ["dense_dpo", "flow_dpo"])
def test_accumulated_dpo_equals_the_full_batch_on_eight_devices(loss):
  seed = int(np.random.randint(1 << 20))
  config, model, params, lora, batch = _setup(loss, seed)
  mesh = sharding.create_mesh((2, 2, 2))
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  key = jax.random.key(seed)
  loss_fn = train_step.make_loss_fn(model, config)
  noise_of = lambda b: dict(b, **train_step.draw_batch_noise(config, b, key))

  def run(accum):
    micro = NamedSharding(mesh, P(None, sharding.BATCH_AXES)) if accum > 1 else None
    f = lambda lo, pa, b: train_step._accumulated_grads(loss_fn, lo, pa, noise_of(b), key, accum,
                                                        shards, micro)
    placed = sharding.shard_batch(batch, mesh)
    with mesh:
      return jax.jit(f)(nn.unbox(lora), nn.unbox(params), placed)

  full_metrics, full_grads = run(1)
  acc_metrics, acc_grads = run(4)
  assert float(full_metrics["loss"]) > 0.01
  np.testing.assert_allclose(acc_metrics["loss"], full_metrics["loss"], rtol=1e-4)
  # float32 sums in another order: measured within 3e-5 of each gradient's scale. Without the
  # non-tie weighting (a mean of micro-batch means) they differ by 0.25-0.34 of it here.
  for g_acc, g_full in zip(jax.tree_util.tree_leaves(acc_grads), jax.tree_util.tree_leaves(full_grads)):
    np.testing.assert_allclose(g_acc, g_full, rtol=0, atol=3e-4 * float(np.abs(g_full).max()))


def test_micro_batches_keep_their_rows_on_their_devices():
  x = np.arange(16)
  micro = np.asarray(train_step.split_micro_batches(jnp.asarray(x), 4, shards=4))
  # Device d holds rows 4d .. 4d + 3; micro-batch m takes row 4d + m of every device.
  assert micro.tolist() == [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]]
  mesh = sharding.create_mesh((2, 2, 2))
  placed = jax.device_put(x, NamedSharding(mesh, P(sharding.BATCH_AXES)))
  spec = NamedSharding(mesh, P(None, sharding.BATCH_AXES))
  out = jax.jit(lambda v: train_step.split_micro_batches(v, 4, 4, spec))(placed)
  assert out.sharding.spec == P(None, sharding.BATCH_AXES)
  with pytest.raises(ValueError, match="not divisible by 4 batch shards x 4"):
    train_step.split_micro_batches(jnp.zeros(12), 4, shards=4)


@pytest.mark.e2e
def test_a_bf16_base_keeps_a_float32_adapter_through_accumulation():
  """Wan 14B ships its frozen base in bf16: the adapter (and so its gradients, accumulated in a
  scan carry) stays float32, and the accumulated step equals the unsplit one."""
  config = tiny_config("dense_dpo", "unused")
  config.model.param_dtype = "bfloat16"
  model = build(model_config(config))
  variables = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, T, H, W, C)), jnp.zeros((1,)),
                                  jnp.zeros((1, L, D)), jnp.ones((1, L), bool)))
  assert {x.dtype for x in jax.tree_util.tree_leaves(variables["params"])} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree_util.tree_leaves(variables["lora"])} == {jnp.dtype(jnp.float32)}
  _, _, _, _, batch = _setup("dense_dpo", 0)
  lora = randomize(variables["lora"], 1)
  loss_fn = train_step.make_loss_fn(model, config)
  key = jax.random.key(0)
  noisy = dict(batch, **train_step.draw_batch_noise(config, batch, key))
  run = lambda accum: jax.jit(lambda lo: train_step._accumulated_grads(
      loss_fn, lo, variables["params"], noisy, key, accum))(lora)
  (full, full_grads), (acc, acc_grads) = run(1), run(4)
  assert {g.dtype for g in jax.tree_util.tree_leaves(acc_grads)} == {jnp.dtype(jnp.float32)}
  np.testing.assert_allclose(acc["loss"], full["loss"], rtol=1e-3)
