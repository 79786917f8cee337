"""dpo_errors / dpo_loss with a hand-written toy model (no dependency on densedpo_jax.model)."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densedpo_jax.objectives import dpo
from tests.helpers import dense_dpo_reference, gamma

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


def _error_gap_bound(params, lora, batch, noise):
  """`[2, 2B, T]` bound on |a - b| for two float32 computations a, b of the per-frame errors
  (policy, reference) that round differently (jit fuses and contracts, eager does not).

  An error is a mean of n = H*W*C squared residuals d = target - v. Each computation of d rounds
  at most m = 2C + 12 times along a chain whose absolute terms add up to A (the same formula on
  absolute values: |x0| + |eps| + |x_t| |w| + ...), plus the text mean of L*D terms; so
  |d_a - d_b| <= 2 (gamma_m A + gamma_{L*D} mean|text|) =: delta, and the errors differ by at
  most 2 gamma_n e + mean(2 |d| delta + delta^2).
  """
  t = np.asarray(noise["t"], np.float64)[:, None, None, None, None]
  x0 = {k: np.asarray(batch[k], np.float64) for k in ("latent_a", "latent_b")}
  eps = {"latent_a": np.asarray(noise["eps_a"], np.float64),
         "latent_b": np.asarray(noise["eps_b"], np.float64)}
  mask = np.asarray(batch["text_mask"])
  text_abs = (np.abs(np.asarray(batch["text_emb"], np.float64)) * mask[..., None]).mean((1, 2))
  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  l64 = jax.tree.map(lambda a: np.asarray(a, np.float64), lora)
  abs_p, abs_l = jax.tree.map(np.abs, p64), jax.tree.map(np.abs, l64)
  bounds = []
  for lora_on in (True, False):
    rows = []
    for k in ("latent_a", "latent_b"):
      x_t = (1 - t) * x0[k] + t * eps[k]
      d = eps[k] - x0[k] - toy_numpy(p64, l64, x_t, np.asarray(noise["t"]), batch["text_emb"],
                                     mask, lora_on)
      x_abs = (1 - t) * np.abs(x0[k]) + t * np.abs(eps[k])
      a = (np.abs(eps[k]) + np.abs(x0[k]) + x_abs
           + toy_numpy(abs_p, abs_l, x_abs, np.asarray(noise["t"]), np.abs(batch["text_emb"]),
                       mask, lora_on))
      delta = 2 * (gamma(2 * C + 12) * a + gamma(L * D) * text_abs[:, None, None, None, None])
      e = (d ** 2).mean((2, 3, 4))
      rows.append(2 * gamma(H * W * C) * e + (2 * np.abs(d) * delta + delta ** 2).mean((2, 3, 4)))
    bounds.append(np.concatenate(rows))
  return np.stack(bounds)


def test_dpo_loss_composes_errors_and_losses_under_jit(rng):
  """jit(dpo_loss) equals the float64 DenseDPO formula on the eager errors, within the float32
  rounding of both: the error gap bound above, times beta / 2 (z is beta / 2 times a signed sum
  of four errors, and -log sigmoid moves by at most |dz|), plus z's and the mean's own roundings.
  """
  params, lora, batch, key = make(rng)
  noise = dpo.draw_noise(batch, key)
  batch = {**batch, **noise}
  errs = {k: np.asarray(v, np.float64) for k, v in
          dpo.dpo_errors(toy_apply, params, lora, batch, key).items()}
  beta = float(rng.uniform(10, 100))
  step = jax.jit(lambda l, batch: dpo.dpo_loss(toy_apply, params, l, batch, key, beta=beta))
  loss, metrics = step(lora, batch)
  labels = np.asarray(batch["labels"])
  want = dense_dpo_reference(errs, labels, beta)
  gap = _error_gap_bound(params, lora, batch, noise)  # [policy/ref, a|b, T]
  per_unit = gap[:, :B].sum(0) + gap[:, B:].sum(0)  # the four errors of each unit
  size = sum(np.abs(e) for e in errs.values())
  tol = float(np.max((beta / 2) * (2 * per_unit + 2 * gamma(4) * size))) + 2 * gamma(B * T) * want
  np.testing.assert_allclose(float(loss), want, rtol=0, atol=tol)
  # Segment granularity with one segment per video equals Flow-DPO on the mean errors: the same
  # formula on means of T errors summed in another order (2 gamma_T of each mean, times beta/2).
  ones = {**batch, "labels": jnp.ones((B, T), jnp.int32), "segment_ids": jnp.zeros((B, T), int)}
  seg, _ = dpo.dpo_loss(toy_apply, params, lora, ones, key, beta=beta, granularity="segment")
  glob, _ = dpo.dpo_loss(toy_apply, params, lora, {**batch, "labels": jnp.ones(B)}, key,
                         beta=beta, dense=False)
  means = sum(e.mean(1) for e in errs.values())
  tol = (float(np.max((beta / 2) * (2 * gamma(T) + 2 * gamma(4)) * means))
         + 2 * gamma(B) * float(glob))
  np.testing.assert_allclose(float(seg), float(glob), rtol=0, atol=tol)


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


def test_the_ground_truth_term_is_the_policys_flow_error_on_it(rng):
  """dpo.gt_lambda: the policy also runs on the ground truth (one call of 3B videos, the
  reference still 2B), at the pair's t and member a's noise; the loss adds gt_lambda times its
  mean flow-matching error, checked against the float64 toy model."""
  params, lora, batch, key = make(rng)
  batch["gt_latent"] = jnp.asarray(rng.normal(size=(B, T, H, W, C)), jnp.float32)
  calls = []
  apply = functools.partial(toy_apply, calls=calls)
  base, _ = dpo.dpo_loss(apply, params, lora, batch, key, beta=2.0)
  calls.clear()
  loss, metrics = dpo.dpo_loss(apply, params, lora, batch, key, beta=2.0, gt_lambda=0.5)
  assert [(c["x"].shape[0], c["lora_enabled"]) for c in calls] == [(3 * B, True), (2 * B, False)]
  t = np.asarray(calls[0]["t"][:B], np.float64)[:, None, None, None, None]
  x_a = np.asarray(calls[0]["x"][:B], np.float64)
  eps = (x_a - (1 - t) * np.asarray(batch["latent_a"], np.float64)) / t  # Member a's noise.
  gt = np.asarray(batch["gt_latent"], np.float64)
  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  l64 = jax.tree.map(lambda a: np.asarray(a, np.float64), lora)
  v = toy_numpy(p64, l64, (1 - t) * gt + t * eps, t[:, 0, 0, 0, 0], batch["text_emb"],
                np.asarray(batch["text_mask"]), True)
  want = ((eps - gt - v) ** 2).mean()
  np.testing.assert_allclose(metrics["gt_flow_loss"], want, rtol=1e-3)
  np.testing.assert_allclose(loss, base + 0.5 * want, rtol=1e-3)
  del batch["gt_latent"]
  with pytest.raises(ValueError, match=r"no 'gt_latent' \(generate guided pairs with "
                                       r"config.pairs.store_gt=True\)"):
    dpo.dpo_loss(toy_apply, params, lora, batch, key, beta=2.0, gt_lambda=0.5)
