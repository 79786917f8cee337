"""Rectified flow (SD3 convention): noising, timestep sampling, Euler/CFG and guided samplers.

    x_t = (1 - t) * x0 + t * eps        v = dx_t / dt = eps - x0

Time 1 is pure noise, time 0 is data. Sampling integrates dx/dt = v from t = 1 down to 0.

Samplers take a generic `velocity_fn(x, t, text, text_mask, null_text) -> v` (`x [B, T, H, W, C]`,
`t [B]`, `text [B, L, D]`, `text_mask [B, L]`, `null_text` None or bool `[B]`). They are traceable
and run the whole integration as one `lax.fori_loop`, so jit the caller with the model variables
bound inside, not closed over as constants:

    @jax.jit
    def generate(variables, keys, text, text_mask):
      velocity_fn = functools.partial(model.apply, variables)
      return flow.sample(velocity_fn, keys, (T, H, W, C), text, text_mask, num_steps=32)

Every sampler takes one PRNG key per video (`keys [B]`, e.g. `jax.random.split(key, B)`); noise
is drawn per key, so a video depends on its own key only, never on its batch neighbours.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np


def _bcast(t, x):
  """Reshapes per-video `t [B]` to broadcast against `x [B, ...]`."""
  t = jnp.asarray(t, x.dtype)
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def add_noise(x0, eps, t):
  """`x_t = (1 - t) x0 + t eps`; `x0, eps [B, T, H, W, C]`, `t [B]` -> `[B, T, H, W, C]`."""
  t = _bcast(t, x0)
  return (1 - t) * x0 + t * eps


def velocity_target(x0, eps):
  """Flow-matching target `v = eps - x0`, shaped like `x0`."""
  return eps - x0


def logit_normal_t(key, shape, mean=0.0, std=1.0):
  """`t = sigmoid(mean + std * n)`, `n ~ N(0, 1)` (SD3 default mean 0, std 1). float32 `shape`."""
  return jax.nn.sigmoid(mean + std * jax.random.normal(key, shape, jnp.float32))


def uniform_t(key, shape):
  """`t ~ U(0, 1)`, float32 `shape`."""
  return jax.random.uniform(key, shape, jnp.float32)


def sample_t(key, shape, kind="logit_normal", mean=0.0, std=1.0, t_range=(0.0, 1.0)):
  """Training timesteps by name: `kind` is 'logit_normal' (uses mean, std) or 'uniform'.

  `t_range = (lo, hi)` restricts t to `[lo, hi)` (`hi = 1` included; one expert's levels of a
  two-expert model, where the level `hi` is the other expert's): the
  distribution truncated to it, drawn by its inverse CDF, `t = F^-1(F(lo) + u (F(hi) - F(lo)))`,
  `u ~ U(0, 1)`; for the logit-normal `F(t) = Phi((logit t - mean) / std)`. The full range draws
  as before.
  """
  if kind not in ("logit_normal", "uniform"):
    raise ValueError(f"kind must be 'logit_normal' or 'uniform', got {kind!r}")
  lo, hi = float(t_range[0]), float(t_range[1])
  if not 0.0 <= lo < hi <= 1.0:
    raise ValueError(f"t_range={tuple(t_range)}: expected 0 <= lo < hi <= 1")
  if (lo, hi) == (0.0, 1.0):
    return logit_normal_t(key, shape, mean, std) if kind == "logit_normal" else uniform_t(key, shape)
  below_hi = hi if hi == 1.0 else float(np.nextafter(np.float32(hi), np.float32(0)))
  u = jax.random.uniform(key, shape, jnp.float32)
  if kind == "uniform":
    return jnp.clip(lo + (hi - lo) * u, lo, below_hi)
  cdf = lambda t: 0.0 if t == 0 else 1.0 if t == 1 else 0.5 * math.erfc(
      -(math.log(t / (1 - t)) - mean) / (std * math.sqrt(2)))  # Float64, at trace time.
  p = cdf(lo) + u * (cdf(hi) - cdf(lo))
  t = jax.nn.sigmoid(mean + std * jax.scipy.special.ndtri(p))
  return jnp.clip(t, lo, below_hi)


def sample_t_two_experts(key, shape, boundary, high_share=0.5, **kw):
  """Training timesteps for a run adapting both experts of a two-expert model: each draw picks
  the high-noise expert with probability `high_share`, then t from that expert's range
  (`sample_t` truncated to `[boundary, 1]` or `[0, boundary)`), so each adapter gets its share
  of the pairs whatever mass the plain distribution puts above the boundary."""
  if not 0.0 < high_share < 1.0:
    raise ValueError(f"high_share={high_share}: expected a share in (0, 1)")
  key_pick, key_high, key_low = jax.random.split(key, 3)
  high = jax.random.uniform(key_pick, shape) < high_share
  return jnp.where(high, sample_t(key_high, shape, t_range=(boundary, 1.0), **kw),
                   sample_t(key_low, shape, t_range=(0.0, boundary), **kw))


def shift_time(t, shift=None):
  """SD3 time shift `t' = shift t / (1 + (shift - 1) t)`; keeps 0 and 1 fixed. None: identity."""
  if shift is None or shift == 1:
    return t
  if shift <= 0:
    raise ValueError(f"shift must be > 0, got {shift}")
  return shift * t / (1 + (shift - 1) * t)


def time_grid(num_steps, shift=None):
  """Sampling times from 1 to 0: float64 NumPy `[num_steps + 1]`, uniform before the shift."""
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
  t = shift_time(1.0 - np.arange(num_steps + 1, dtype=np.float64) / num_steps, shift)
  t[0], t[-1] = 1.0, 0.0
  return t


def guided_times(eta, num_steps, shift=None):
  """Times of a guided run at static `eta`: `[eta, grid points < eta ...]`, float64 NumPy.

  Its length minus one is the number of model evaluations: about `eta * num_steps` without a
  shift, fewer with a shift > 1 (which spends the steps near t = 1).
  """
  eta = float(eta)
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"eta must be in [0, 1], got {eta}")
  grid = time_grid(num_steps, shift)
  return np.concatenate([[eta], grid[grid < eta]])


def per_video_noise(keys, shape, dtype=jnp.float32):
  """Standard normal noise `[B, *shape]`, video i drawn from `keys[i]` alone."""
  return jax.vmap(lambda k: jax.random.normal(k, tuple(shape), dtype))(keys)


def cfg_velocity(velocity_fn, x, t, text, text_mask, cfg_scale=None):
  """Classifier-free guided velocity `v_u + cfg_scale (v_c - v_u)`, `[B, T, H, W, C]`.

  The conditional and unconditional halves go through one `velocity_fn` call on a `2B` batch
  (`null_text = [False] * B + [True] * B`). `cfg_scale` is a static Python number; None or 1
  skips the unconditional half.
  """
  if cfg_scale is None or cfg_scale == 1:
    return velocity_fn(x, t, text, text_mask, None)
  b = x.shape[0]
  twice = lambda a: jnp.concatenate([a, a], axis=0)
  null_text = jnp.arange(2 * b) >= b
  v = velocity_fn(twice(x), twice(t), twice(text), twice(text_mask), null_text)
  v_cond, v_uncond = v[:b], v[b:]
  return v_uncond + cfg_scale * (v_cond - v_uncond)


def euler_integrate(velocity_fn, x, times, text, text_mask, *, cfg_scale=None):
  """Euler steps `x <- x + (t_{k+1} - t_k) v(x, t_k)` along `times`, as one `lax.fori_loop`.

  Args:
    velocity_fn: `(x, t, text, text_mask, null_text) -> v`.
    x: `[B, T, H, W, C]` state at `times[..., 0]`.
    times: decreasing times, `[K + 1]` shared by the batch or `[B, K + 1]` per video. A step
      whose times are equal is a no-op; when that holds for the whole batch the model call is
      skipped (`lax.cond`), so per-video runs cost only as many calls as the longest video needs.
    text: `[B, L, D]`; text_mask: `[B, L]` bool.
    cfg_scale: static classifier-free guidance scale, None or 1 for none.
  Returns:
    `[B, T, H, W, C]`, the state at `times[..., -1]`.
  """
  b = x.shape[0]
  times = jnp.asarray(times, jnp.float32)
  per_video = times.ndim == 2
  if per_video and times.shape[0] != b:
    raise ValueError(f"times must be [K+1] or [B={b}, K+1], got {times.shape}")

  def body(k, x):
    t_cur = jnp.broadcast_to(times[..., k], (b,))
    dt = jnp.broadcast_to(times[..., k + 1], (b,)) - t_cur

    def step(x):
      v = cfg_velocity(velocity_fn, x, t_cur, text, text_mask, cfg_scale)
      return x + _bcast(dt, x) * v.astype(x.dtype)

    if per_video:
      return jax.lax.cond(jnp.any(dt != 0), step, lambda x: x, x)
    return step(x)

  return jax.lax.fori_loop(0, times.shape[-1] - 1, body, x)


def _check_batch(name, a, b):
  if a.shape[0] != b:
    raise ValueError(f"{name} must have batch size {b} (one per key/video), got shape {a.shape}")


def sample(velocity_fn, keys, shape, text, text_mask, *, num_steps, shift=None, cfg_scale=None,
           dtype=jnp.float32):
  """Full Euler sampling from t = 1 to 0 (Algo. 1 member).

  Args:
    velocity_fn: `(x, t, text, text_mask, null_text) -> v`.
    keys: `[B]` PRNG keys, one per video.
    shape: per-video latent shape `(T, H, W, C)`.
    text: `[B, L, D]`; text_mask: `[B, L]`.
    num_steps: number of Euler steps (= model evaluations, twice the batch with CFG).
    shift: optional SD3 time shift; cfg_scale: static CFG scale.
  Returns:
    `[B, T, H, W, C]` latents.
  """
  b = keys.shape[0]
  _check_batch("text", text, b)
  _check_batch("text_mask", text_mask, b)
  x = per_video_noise(keys, shape, dtype)
  return euler_integrate(velocity_fn, x, time_grid(num_steps, shift), text, text_mask,
                         cfg_scale=cfg_scale)


def guided_sample(velocity_fn, x_gt, keys, eta, text, text_mask, *, num_steps, shift=None,
                  cfg_scale=None):
  """SDEdit-guided sampling (Algo. 2): noise `x_gt` to `t = eta`, integrate to 0.

  `x_eta = (1 - eta) x_gt + eta eps`, then one step from eta to the largest grid point below it
  and the remaining grid steps down to 0.

  `eta` as a Python float is static: the loop runs `len(guided_times(eta, ...)) - 1` steps, about
  `eta` of a full run. `eta` as an array `[B]` (or scalar array) may be traced and differ per
  video: the loop then has `num_steps` iterations on the full grid clipped at each video's eta;
  iterations above every video's eta skip the model (`lax.cond`), so a batch costs about
  `max(eta)` of a full run (under `vmap` the cond becomes a select and the saving is lost).

  Args:
    velocity_fn: `(x, t, text, text_mask, null_text) -> v`.
    x_gt: `[B, T, H, W, C]` ground-truth latents.
    keys: `[B]` PRNG keys, one per video.
    eta: guidance level in [0, 1] (1 = an unguided full run; 0 returns `x_gt`).
    text: `[B, L, D]`; text_mask: `[B, L]`.
  Returns:
    `[B, T, H, W, C]` latents.
  """
  b = x_gt.shape[0]
  for name, a in (("keys", keys), ("text", text), ("text_mask", text_mask)):
    _check_batch(name, a, b)
  eps = per_video_noise(keys, x_gt.shape[1:], x_gt.dtype)
  if isinstance(eta, (int, float, np.floating, np.integer)):
    times = guided_times(eta, num_steps, shift)
    x = add_noise(x_gt, eps, jnp.full((b,), times[0], jnp.float32))
  else:
    eta = jnp.broadcast_to(jnp.asarray(eta, jnp.float32), (b,))
    grid = jnp.asarray(time_grid(num_steps, shift), jnp.float32)
    times = jnp.minimum(grid[None, :], eta[:, None])
    x = add_noise(x_gt, eps, eta)
  return euler_integrate(velocity_fn, x, times, text, text_mask, cfg_scale=cfg_scale)


def _pairs(run, keys_a, keys_b, batched):
  """Runs a sampler once on `2B` videos (a then b) and splits the result."""
  b = keys_a.shape[0]
  if keys_b.shape != keys_a.shape:
    raise ValueError(f"keys_b must have the shape of keys_a {keys_a.shape}, got {keys_b.shape}")
  twice = lambda a: jnp.concatenate([a, a], axis=0)
  out = run(jnp.concatenate([keys_a, keys_b], axis=0), *map(twice, batched))
  return out[:b], out[b:]


def vanilla_pairs(velocity_fn, keys_a, keys_b, shape, text, text_mask, **kwargs):
  """Algo. 1: two independent full runs per prompt, batched as one `2B` run -> `(a, b)`."""
  run = lambda keys, text, mask: sample(velocity_fn, keys, shape, text, mask, **kwargs)
  return _pairs(run, keys_a, keys_b, (text, text_mask))


def guided_pairs(velocity_fn, x_gt, keys_a, keys_b, eta, text, text_mask, **kwargs):
  """Algo. 2: two guided runs from the same `x_gt` and eta, batched as one `2B` run -> `(a, b)`."""
  if isinstance(eta, (int, float, np.floating, np.integer)):
    run = lambda keys, x, text, mask: guided_sample(velocity_fn, x, keys, eta, text, mask, **kwargs)
    return _pairs(run, keys_a, keys_b, (x_gt, text, text_mask))
  eta = jnp.broadcast_to(jnp.asarray(eta, jnp.float32), (x_gt.shape[0],))
  run = lambda keys, x, e, text, mask: guided_sample(velocity_fn, x, keys, e, text, mask, **kwargs)
  return _pairs(run, keys_a, keys_b, (x_gt, eta, text, text_mask))


def guided_cost(eta, num_steps, shift=None):
  """Model evaluations of a guided run at static `eta`, as a fraction of a full run."""
  return (len(guided_times(eta, num_steps, shift)) - 1) / num_steps


__all__ = [
    "add_noise", "velocity_target", "logit_normal_t", "uniform_t", "sample_t", "shift_time",
    "time_grid", "guided_times", "guided_cost", "per_video_noise", "cfg_velocity",
    "euler_integrate", "sample", "guided_sample", "vanilla_pairs", "guided_pairs",
]
