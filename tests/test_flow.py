"""Rectified flow and samplers against float64 NumPy references and an exact Gaussian velocity."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densedpo_jax.objectives import flow
from tests.helpers import euler_gap_bound, gamma

SHAPE = (2, 3, 3, 2)  # per-video (T, H, W, C)


@pytest.fixture
def rng():
  seed = int.from_bytes(os.urandom(4), "little")
  print(f"seed={seed}")
  return np.random.default_rng(seed)


def np_grid(num_steps, shift=None):
  u = 1.0 - np.arange(num_steps + 1) / num_steps
  return u if shift is None else shift * u / (1 + (shift - 1) * u)


def gaussian_velocity(mu, sigma):
  """Exact marginal velocity of x_t = (1-t) x0 + t eps for x0 ~ N(mu, sigma^2) (elementwise):
  E[eps - x0 | x_t = x] = -mu + (t - (1-t) sigma^2) / s_t^2 (x - (1-t) mu), s_t^2 =
  (1-t)^2 sigma^2 + t^2. Its flow maps eps to mu + sigma eps."""
  def v(x, t, xp):
    t = t.reshape(t.shape + (1,) * (x.ndim - 1))
    var = (1 - t) ** 2 * sigma ** 2 + t ** 2
    return -mu + (t - (1 - t) * sigma ** 2) / var * (x - (1 - t) * mu)
  return v


def np_euler(v, x, times, text_term=None):
  x = np.asarray(x, np.float64)
  for t0, t1 in zip(times[:-1], times[1:]):
    x = x + (t1 - t0) * v(x, np.full(x.shape[0], t0), np)
  return x


def make_text(rng, b):
  return (jnp.asarray(rng.normal(size=(b, 3, 4)), jnp.float32), jnp.ones((b, 3), bool))


def test_noising_and_target(rng):
  x0, eps = (rng.normal(size=(3,) + SHAPE).astype(np.float32) for _ in range(2))
  t = rng.uniform(size=3).astype(np.float32)
  tb = t.astype(np.float64)[:, None, None, None, None]
  np.testing.assert_allclose(flow.add_noise(x0, eps, t), (1 - tb) * x0 + tb * eps, rtol=1e-5,
                             atol=1e-6)
  # The target is the time derivative of the noising path.
  _, dxdt = jax.jvp(lambda t: flow.add_noise(x0, eps, t), (jnp.asarray(t),), (jnp.ones(3),))
  np.testing.assert_allclose(dxdt, flow.velocity_target(x0, eps), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(flow.velocity_target(x0, eps), eps.astype(np.float64) - x0,
                             rtol=1e-6)


def test_timestep_samplers(rng):
  key = jax.random.key(int(rng.integers(2**31)))
  mean, std = rng.uniform(-1, 1), rng.uniform(0.5, 1.5)
  t = np.asarray(flow.logit_normal_t(key, (20000,), mean, std), np.float64)
  assert np.all((t > 0) & (t < 1))
  logit = np.log(t / (1 - t))
  assert abs(logit.mean() - mean) < 0.05 and abs(logit.std() - std) < 0.05
  np.testing.assert_array_equal(flow.sample_t(key, (5,), "logit_normal", mean, std),
                                flow.logit_normal_t(key, (5,), mean, std))
  u = np.asarray(flow.sample_t(key, (20000,), "uniform"))
  assert np.all((u >= 0) & (u < 1)) and abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
  with pytest.raises(ValueError, match="kind"):
    flow.sample_t(key, (2,), "normal")


@pytest.mark.parametrize("kind", ["logit_normal", "uniform"])
@pytest.mark.parametrize("t_range", [(0.875, 1.0), (0.0, 0.875), (0.2, 0.6)])
def test_truncated_timesteps_follow_the_truncated_distribution(rng, kind, t_range):
  """One expert's levels: the draws stay in [lo, hi) and follow the distribution truncated to it
  (a Kolmogorov-Smirnov test against its float64 CDF, at the 1e-6 level)."""
  from scipy import special
  key = jax.random.key(int(rng.integers(2**31)))
  mean, std, (lo, hi), n = rng.uniform(-1, 1), rng.uniform(0.5, 1.5), t_range, 20000
  t = np.sort(np.asarray(flow.sample_t(key, (n,), kind, mean, std, t_range=t_range), np.float64))
  assert t.min() >= lo and (t.max() < hi or hi == 1.0)
  if kind == "uniform":
    cdf = lambda x: (x - lo) / (hi - lo)
  else:
    full = lambda x: special.ndtr((special.logit(np.clip(x, 1e-300, 1 - 1e-16)) - mean) / std)
    cdf = lambda x: (full(x) - full(lo)) / (full(hi) - full(lo))
  ecdf = np.arange(1, n + 1) / n
  ks = max(np.abs(ecdf - cdf(t)).max(), np.abs(ecdf - 1 / n - cdf(t)).max())
  assert ks < np.sqrt(-np.log(1e-6 / 2) / (2 * n)), ks
  with pytest.raises(ValueError, match="t_range"):
    flow.sample_t(key, (2,), kind, t_range=(0.9, 0.8))


def test_two_expert_timesteps_give_each_expert_its_share(rng):
  """expert='both': a share `high_share` of the draws falls at or above the boundary (within 5
  binomial sds), and each side follows the logit-normal truncated to its range (KS at 1e-6)."""
  from scipy import special
  key = jax.random.key(int(rng.integers(2**31)))
  n, boundary, share = 20000, 0.875, 0.4
  t = np.asarray(flow.sample_t_two_experts(key, (n,), boundary, share), np.float64)
  high = t >= boundary
  assert abs(high.mean() - share) < 5 * np.sqrt(share * (1 - share) / n)
  full = lambda x: special.ndtr(special.logit(np.clip(x, 1e-300, 1 - 1e-16)))
  for side, (lo, hi) in ((t[high], (boundary, 1.0)), (t[~high], (0.0, boundary))):
    side = np.sort(side)
    cdf = (full(side) - full(lo)) / (full(hi) - full(lo))
    ecdf = np.arange(1, len(side) + 1) / len(side)
    ks = max(np.abs(ecdf - cdf).max(), np.abs(ecdf - 1 / len(side) - cdf).max())
    assert ks < np.sqrt(-np.log(1e-6 / 2) / (2 * len(side))), ks
  with pytest.raises(ValueError, match="high_share=1.0"):
    flow.sample_t_two_experts(key, (2,), boundary, 1.0)


def test_time_grid_and_shift():
  np.testing.assert_allclose(flow.time_grid(8), np_grid(8), rtol=1e-12)
  np.testing.assert_allclose(flow.time_grid(8, 3.0), np_grid(8, 3.0), rtol=1e-12)
  assert flow.time_grid(8, 3.0)[0] == 1.0 and flow.time_grid(8, 3.0)[-1] == 0.0
  with pytest.raises(ValueError, match="num_steps"):
    flow.time_grid(0)


@pytest.mark.parametrize("shift", [None, 2.5])
def test_sampler_matches_numpy_euler_and_gaussian_target(rng, shift):
  b, steps = 3, 12
  mu = rng.normal(size=SHAPE)
  sigma = rng.uniform(0.3, 1.5, SHAPE)
  v = gaussian_velocity(mu, sigma)
  velocity_fn = lambda x, t, text, mask, null: v(x, t, jnp).astype(x.dtype)
  keys = jax.random.split(jax.random.key(int(rng.integers(2**31))), b)
  text, mask = make_text(rng, b)
  run = jax.jit(functools.partial(flow.sample, velocity_fn, shape=SHAPE, num_steps=steps,
                                  shift=shift))
  got = run(keys, text=text, text_mask=mask)
  eps = np.asarray(flow.per_video_noise(keys, SHAPE), np.float64)
  np.testing.assert_allclose(got, np_euler(v, eps, np_grid(steps, shift)), rtol=1e-4, atol=1e-5)
  # Fine steps reproduce the exact transport eps -> mu + sigma * eps.
  fine = jax.jit(functools.partial(flow.sample, velocity_fn, shape=SHAPE, num_steps=400,
                                   shift=shift))(keys, text=text, text_mask=mask)
  np.testing.assert_allclose(fine, mu + sigma * eps, atol=2e-2)


def test_sampler_is_one_loop_and_per_video_deterministic(rng):
  traces = []

  def velocity_fn(x, t, text, mask, null):
    traces.append(x.shape)
    return -x * t[:, None, None, None, None] + text.mean((1, 2))[:, None, None, None, None]

  keys = jax.random.split(jax.random.key(int(rng.integers(2**31))), 4)
  text, mask = make_text(rng, 4)
  run = jax.jit(lambda k, t, m: flow.sample(velocity_fn, k, SHAPE, t, m, num_steps=16))
  jaxpr = str(jax.make_jaxpr(lambda k, t, m: flow.sample(velocity_fn, k, SHAPE, t, m,
                                                         num_steps=16))(keys, text, mask))
  assert "while" in jaxpr or "scan" in jaxpr
  traces.clear()
  full = run(keys, text, mask)
  assert traces == [(4,) + SHAPE]  # traced once, not unrolled over 16 steps
  np.testing.assert_array_equal(run(keys, text, mask), full)
  sub = run(keys[1:3], text[1:3], mask[1:3])  # a video does not depend on its neighbours
  # Another batch size compiles another loop: float32 roundings of v = -x t + mean(text) and of
  # the step, and the text mean's 12 terms (its error enters once a step times dt).
  scale = float(np.abs(full).max() + np.abs(text).max())
  tol = euler_gap_bound(16, scale) + 2 * gamma(12) * float(np.abs(text).max()) * np.e
  np.testing.assert_allclose(sub, full[1:3], rtol=0, atol=tol)
  assert not np.allclose(full[0], full[1])


def test_cfg_batches_halves_into_one_call(rng):
  b = 2
  c_cond, c_uncond = rng.normal(size=SHAPE), rng.normal(size=SHAPE)
  calls = []

  def velocity_fn(x, t, text, mask, null):
    calls.append((x.shape[0], null))
    c = c_cond if null is None else jnp.where(null[:, None, None, None, None], c_uncond, c_cond)
    return (-0.5 * x + c).astype(x.dtype)

  x = rng.normal(size=(b,) + SHAPE).astype(np.float32)
  text, mask = make_text(rng, b)
  t = jnp.full((b,), 0.5)
  scale = float(rng.uniform(2, 6))
  got = flow.cfg_velocity(velocity_fn, x, t, text, mask, scale)
  assert calls == [(2 * b, calls[0][1])]
  np.testing.assert_array_equal(calls[0][1], [False] * b + [True] * b)
  want = (-0.5 * x + c_uncond) + scale * (c_cond - c_uncond)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  calls.clear()
  np.testing.assert_allclose(flow.cfg_velocity(velocity_fn, x, t, text, mask, 1.0),
                             -0.5 * x + c_cond, rtol=1e-5, atol=1e-6)
  assert calls == [(b, None)]
  # Full CFG sampling against a NumPy Euler run of the guided field.
  keys = jax.random.split(jax.random.key(int(rng.integers(2**31))), b)
  out = flow.sample(velocity_fn, keys, SHAPE, text, mask, num_steps=5, cfg_scale=scale)
  v_np = lambda x, t, xp: -0.5 * x + c_uncond + scale * (c_cond - c_uncond)
  eps = flow.per_video_noise(keys, SHAPE)
  np.testing.assert_allclose(out, np_euler(v_np, eps, np_grid(5)), rtol=1e-4, atol=1e-5)


def count_calls(fn):
  """Wraps a velocity function so that every executed evaluation increments a host counter."""
  counter = [0]

  def wrapped(x, t, text, mask, null):
    jax.debug.callback(lambda: counter.__setitem__(0, counter[0] + 1))
    return fn(x, t, text, mask, null)
  return wrapped, counter


@pytest.mark.parametrize("shift", [None, 3.0])
def test_guided_sampling_static_and_per_video_eta(rng, shift):
  b, steps = 3, 10
  mu, sigma = rng.normal(size=SHAPE), rng.uniform(0.3, 1.5, SHAPE)
  v = gaussian_velocity(mu, sigma)
  velocity_fn, counter = count_calls(lambda x, t, text, mask, null: v(x, t, jnp).astype(x.dtype))
  x_gt = rng.normal(size=(b,) + SHAPE).astype(np.float32)
  keys = jax.random.split(jax.random.key(int(rng.integers(2**31))), b)
  text, mask = make_text(rng, b)
  eps = np.asarray(flow.per_video_noise(keys, SHAPE), np.float64)
  grid = np_grid(steps, shift)

  def want(eta):
    times = np.concatenate([[eta], grid[grid < eta]])
    return np_euler(v, (1 - eta) * x_gt + eta * eps, times), len(times) - 1

  eta = float(rng.uniform(0.2, 0.8))
  static = jax.jit(lambda k, x: flow.guided_sample(velocity_fn, x, k, eta, text, mask,
                                                   num_steps=steps, shift=shift))
  out = static(keys, x_gt)
  jax.effects_barrier()
  ref, n_steps = want(eta)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
  assert counter[0] == n_steps == len(flow.guided_times(eta, steps, shift)) - 1
  assert flow.guided_cost(eta, steps, shift) <= eta + 1 / steps

  etas = rng.uniform(0.1, 0.7, b).astype(np.float32)
  counter[0] = 0
  per_video = jax.jit(lambda k, x, e: flow.guided_sample(velocity_fn, x, k, e, text, mask,
                                                         num_steps=steps, shift=shift))
  out = per_video(keys, x_gt, etas)
  jax.effects_barrier()
  for i in range(b):
    np.testing.assert_allclose(out[i], want(float(etas[i]))[0][i], rtol=1e-4, atol=1e-5)
  assert counter[0] == want(float(etas.max()))[1]  # steps above every eta skip the model


def test_guided_limits(rng):
  b = 2
  velocity_fn = lambda x, t, text, mask, null: jnp.sin(x) + t[:, None, None, None, None]
  x_gt = rng.normal(size=(b,) + SHAPE).astype(np.float32)
  keys = jax.random.split(jax.random.key(int(rng.integers(2**31))), b)
  text, mask = make_text(rng, b)
  run = lambda eta, **kw: flow.guided_sample(velocity_fn, x_gt, keys, eta, text, mask,
                                             num_steps=8, **kw)
  np.testing.assert_array_equal(run(0.0), x_gt)
  np.testing.assert_allclose(run(1e-5), x_gt, atol=1e-4)
  np.testing.assert_allclose(run(jnp.full((b,), 1e-5)), x_gt, atol=1e-4)
  full = flow.sample(velocity_fn, keys, SHAPE, text, mask, num_steps=8)
  # The same 8 Euler steps of v = sin(x) + t (Lipschitz 1) from another time-grid code.
  tol = euler_gap_bound(8, float(np.abs(full).max()) + 2.0)
  np.testing.assert_allclose(run(1.0), full, rtol=0, atol=tol)
  np.testing.assert_allclose(run(jnp.ones(b)), full, rtol=0, atol=tol)
  # eta on a grid point: no zero-length step, so the cost is exactly eta.
  np.testing.assert_allclose(flow.guided_times(0.5, 10), [0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
  assert flow.guided_cost(0.5, 10) == 0.5 and flow.guided_cost(0.05, 10) == 0.1
  with pytest.raises(ValueError, match="eta"):
    run(1.5)
  with pytest.raises(ValueError, match="keys"):
    flow.guided_sample(velocity_fn, x_gt, keys[:1], 0.5, text, mask, num_steps=4)


def test_pairs_equal_separate_runs(rng):
  b = 2
  velocity_fn = lambda x, t, text, mask, null: (jnp.tanh(x) * text.mean((1, 2))[:, None, None, None,
                                                                                 None])
  keys_a, keys_b = jnp.split(jax.random.split(jax.random.key(int(rng.integers(2**31))), 2 * b), 2)
  text, mask = make_text(rng, b)
  a, bb = flow.vanilla_pairs(velocity_fn, keys_a, keys_b, SHAPE, text, mask, num_steps=6)
  # One batched call against two: float32 roundings of the 6 steps of v = tanh(x) m (Lipschitz
  # |m|) and of the text mean m's 12 terms.
  m = float(np.abs(text).max())
  tol = euler_gap_bound(6, max(float(np.abs(a).max()), float(np.abs(bb).max())) + m,
                        lipschitz=m) + 2 * gamma(12) * m * np.exp(m)
  np.testing.assert_allclose(a, flow.sample(velocity_fn, keys_a, SHAPE, text, mask, num_steps=6),
                             rtol=0, atol=tol)
  np.testing.assert_allclose(bb, flow.sample(velocity_fn, keys_b, SHAPE, text, mask, num_steps=6),
                             rtol=0, atol=tol)
  x_gt = rng.normal(size=(b,) + SHAPE).astype(np.float32)
  for eta in (0.4, jnp.asarray([0.3, 0.6])):
    a, bb = flow.guided_pairs(velocity_fn, x_gt, keys_a, keys_b, eta, text, mask, num_steps=6)
    for out, keys in ((a, keys_a), (bb, keys_b)):
      want = flow.guided_sample(velocity_fn, x_gt, keys, eta, text, mask, num_steps=6)
      np.testing.assert_allclose(out, want, rtol=0, atol=tol + euler_gap_bound(
          6, float(np.abs(want).max()) + m, lipschitz=m))
    assert not np.allclose(a, bb)
