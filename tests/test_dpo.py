"""dpo_errors / dpo_loss with a hand-written toy model (no dependency on densedpo_jax.model)."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densedpo_jax import dpo, losses

B, T, H, W, C, L, D = 3, 4, 2, 2, 3, 5, 6


@pytest.fixture
def rng():
  seed = int.from_bytes(os.urandom(4), "little")
  print(f"seed={seed}")
  return np.random.default_rng(seed)


def toy_apply(variables, x, t, text, text_mask, lora_enabled=True, calls=None):
  """v = x W + t b + mean(text) (+ x A B with LoRA on)."""
  if calls is not None:
    calls.append(dict(x=x, t=t, text=text, lora_enabled=lora_enabled))
  p = variables["params"]
  v = x @ p["w"] + t[:, None, None, None, None] * p["b"]
  v = v + (text * text_mask[..., None]).mean((1, 2))[:, None, None, None, None]
  if lora_enabled:
    v = v + x @ (variables["lora"]["a"] @ variables["lora"]["b"])
  return v


def toy_numpy(p, lora, x, t, text, text_mask, lora_enabled):
  x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)
  v = x @ p["w"] + t[:, None, None, None, None] * p["b"]
  v = v + (np.asarray(text, np.float64) * text_mask[..., None]).mean((1, 2))[:, None, None, None,
                                                                               None]
  if lora_enabled:
    v = v + x @ (lora["a"] @ lora["b"])
  return v


def make(rng, lora_scale=0.3):
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  params = {"w": f(C, C), "b": f(C)}
  lora = {"a": lora_scale * f(C, 2), "b": lora_scale * f(2, C)}
  batch = {"latent_a": f(B, T, H, W, C), "latent_b": f(B, T, H, W, C), "text_emb": f(B, L, D),
           "text_mask": jnp.asarray(rng.uniform(size=(B, L)) > 0.3),
           "labels": jnp.asarray(rng.choice([-1, 0, 1], (B, T))).at[0, 0].set(1)}
  return params, lora, batch, jax.random.key(int(rng.integers(2**31)))


def test_two_calls_shared_t_and_noise_and_errors_match_numpy(rng):
  params, lora, batch, key = make(rng)
  calls = []
  errs = dpo.dpo_errors(functools.partial(toy_apply, calls=calls), params, lora, batch, key)
  assert [(c["x"].shape[0], c["lora_enabled"]) for c in calls] == [(2 * B, True), (2 * B, False)]
  np.testing.assert_array_equal(calls[0]["x"], calls[1]["x"])
  t = np.asarray(calls[0]["t"], np.float64)
  np.testing.assert_array_equal(t[:B], t[B:])
  assert np.all((t > 0) & (t < 1))
  x0 = np.concatenate([batch["latent_a"], batch["latent_b"]]).astype(np.float64)
  tb = t[:, None, None, None, None]
  eps = (np.asarray(calls[0]["x"], np.float64) - (1 - tb) * x0) / tb
  np.testing.assert_allclose(eps[:B], eps[B:], rtol=1e-3, atol=1e-3)
  # Errors from the recovered eps and t, with a float64 NumPy toy model.
  mask = np.asarray(batch["text_mask"])
  text = np.concatenate([batch["text_emb"]] * 2)
  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  l64 = jax.tree.map(lambda a: np.asarray(a, np.float64), lora)
  for name, lora_on in (("theta", True), ("ref", False)):
    v = toy_numpy(p64, l64, (1 - tb) * x0 + tb * eps, t, text, np.concatenate([mask] * 2),
                  lora_on)
    err = ((eps - x0 - v) ** 2).mean((2, 3, 4))
    np.testing.assert_allclose(errs[f"err_{name}_a"], err[:B], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(errs[f"err_{name}_b"], err[B:], rtol=1e-3, atol=1e-4)
    assert errs[f"err_{name}_a"].shape == (B, T)


def test_share_noise_switch(rng):
  params, lora, batch, key = make(rng)
  batch["latent_b"] = batch["latent_a"]  # identical members: errors differ only through eps
  shared = dpo.dpo_errors(toy_apply, params, lora, batch, key)
  np.testing.assert_array_equal(shared["err_theta_a"], shared["err_theta_b"])
  separate = dpo.dpo_errors(toy_apply, params, lora, batch, key, share_noise=False)
  assert not np.allclose(separate["err_theta_a"], separate["err_theta_b"])
  np.testing.assert_array_equal(dpo.dpo_errors(toy_apply, params, lora, batch, key)["err_ref_a"],
                                shared["err_ref_a"])  # deterministic given the key


def test_reference_has_no_gradient(rng):
  params, lora, batch, key = make(rng)
  errs = lambda p, l, name: dpo.dpo_errors(toy_apply, p, l, batch, key)[name].sum()
  for name in ("err_ref_a", "err_ref_b"):
    g_params, g_lora = jax.grad(errs, argnums=(0, 1))(params, lora, name)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves((g_params, g_lora)))
  g_params, g_lora = jax.grad(errs, argnums=(0, 1))(params, lora, "err_theta_a")
  assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves((g_params, g_lora)))


@pytest.mark.parametrize("dense", [True, False])
def test_zero_lora_gives_log2(rng, dense):
  params, lora, batch, key = make(rng)
  lora = {"a": lora["a"], "b": jnp.zeros_like(lora["b"])}  # LoRA init: B = 0
  if not dense:
    batch["labels"] = jnp.asarray(rng.choice([-1, 1], B))
  errs = dpo.dpo_errors(toy_apply, params, lora, batch, key)
  np.testing.assert_array_equal(errs["err_theta_a"], errs["err_ref_a"])
  loss, metrics = dpo.dpo_loss(toy_apply, params, lora, batch, key, beta=100.0, dense=dense)
  np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(metrics["implicit_acc"], 0.5)
  # The gradient on the adapter is not zero (it reaches `a` only through `b`, so check `b`).
  g = jax.grad(lambda l: dpo.dpo_loss(toy_apply, params, l, batch, key, beta=100.0,
                                      dense=dense)[0])(lora)
  assert np.any(np.asarray(g["b"]) != 0)


def test_dpo_loss_composes_errors_and_losses_under_jit(rng):
  params, lora, batch, key = make(rng)
  errs = dpo.dpo_errors(toy_apply, params, lora, batch, key)
  beta = float(rng.uniform(10, 100))
  step = jax.jit(lambda l, batch: dpo.dpo_loss(toy_apply, params, l, batch, key, beta=beta))
  loss, metrics = step(lora, batch)
  want, _ = losses.dense_dpo_loss(**errs, labels=batch["labels"], beta=beta)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  # Segment granularity with one segment per video equals Flow-DPO on the mean errors.
  ones = {**batch, "labels": jnp.ones((B, T), jnp.int32), "segment_ids": jnp.zeros((B, T), int)}
  seg, _ = dpo.dpo_loss(toy_apply, params, lora, ones, key, beta=beta, granularity="segment")
  glob, _ = dpo.dpo_loss(toy_apply, params, lora, {**batch, "labels": jnp.ones(B)}, key,
                         beta=beta, dense=False)
  np.testing.assert_allclose(seg, glob, rtol=1e-5)


def test_bad_batch_raises(rng):
  params, lora, batch, key = make(rng)
  with pytest.raises(ValueError, match="missing \\['text_mask'\\]"):
    dpo.dpo_errors(toy_apply, params, lora, {k: v for k, v in batch.items() if k != "text_mask"},
                   key)
  with pytest.raises(ValueError, match="latent_b"):
    dpo.dpo_errors(toy_apply, params, lora, {**batch, "latent_b": batch["latent_b"][:, :2]}, key)
  with pytest.raises(ValueError, match="text_mask"):
    dpo.dpo_errors(toy_apply, params, lora, {**batch, "text_mask": batch["text_mask"][:, :2]},
                   key)
