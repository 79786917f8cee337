"""Losses against float64 NumPy references written from the formulas (docs/training.md;
the unit loop is `tests/helpers.dpo_units_reference`)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densedpo_jax.objectives import losses
from tests.helpers import dpo_units_reference, gamma

METRICS = ("loss", "implicit_acc", "reward_margin", "policy_err_win", "policy_err_lose",
           "ref_err_win", "ref_err_lose", "nontie_frac")


@pytest.fixture
def rng():
  seed = int.from_bytes(os.urandom(4), "little")
  print(f"seed={seed}")
  return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- references


def ref_dense(e, labels, beta):
  return dpo_units_reference(e, labels, np.ones(labels.shape, bool), beta)


def ref_flow(e, labels, beta):
  return dpo_units_reference([np.asarray(x)[:, None] for x in e], labels[:, None], np.ones((len(labels), 1),
                                                                                  bool), beta)


def ref_segment(e, labels, segment_ids, beta, **variant):
  """Averages each segment's errors, labels it s when all its frames are s, then dpo_units_reference."""
  b, t = labels.shape
  seg_e = [np.zeros((b, t)) for _ in e]
  seg_labels = np.zeros((b, t), int)
  valid = np.zeros((b, t), bool)
  for i in range(b):
    for k in range(t):
      frames = [j for j in range(t) if segment_ids[i, j] == k]
      if not frames:
        continue
      valid[i, k] = True
      for out, x in zip(seg_e, e):
        out[i, k] = np.mean([np.float64(x[i, j]) for j in frames])
      frame_labels = {labels[i, j] for j in frames}
      seg_labels[i, k] = frame_labels.pop() if len(frame_labels) == 1 else 0
  return dpo_units_reference(seg_e, seg_labels, valid, beta, **variant)


def random_errors(rng, shape):
  return [rng.uniform(0.2, 1.5, shape).astype(np.float32) for _ in range(4)]


def random_labels(rng, shape, ties=True):
  labels = rng.choice([-1, 0, 1] if ties else [-1, 1], shape)
  labels.reshape(-1)[0] = 1  # never all ties
  return labels.astype(np.int32)


def dpo_atol(e, beta, per_unit=1):
  """Bound on |float32 - float64| of the DPO loss and of `reward_margin` for errors `e` (four
  arrays, one entry a unit, or `per_unit` entries averaged into one). A unit's
  z = beta / 2 * s * ((ta - ra) - (tb - rb)) rounds 3 times (plus the average's per_unit) over
  terms that add up to sum|e|; -log sigmoid moves by at most |dz|; the means over the U units then
  round gamma_(U + 4) times a value at most beta / 2 * sum|e| + 1 (softplus(-z) <= |z| + log 2)."""
  size = float(np.max(sum(np.abs(np.asarray(x, np.float64)) for x in e)))
  units = np.asarray(e[0]).size
  return (beta / 2) * gamma(3 + per_unit) * size + gamma(units + 4) * ((beta / 2) * size + 1)


def assert_metrics(got, want, e, beta, per_unit=1, sides=1):
  """The metrics within their float32 rounding: z's as `dpo_atol`, the error means within gamma_U
  of max|e|, the fractions (means of 0, 1/2 and 1) within gamma_U; `sides=2` when `want` is a
  float32 computation too."""
  units = np.asarray(e[0]).size
  atol = {"loss": dpo_atol(e, beta, per_unit), "reward_margin": dpo_atol(e, beta, per_unit),
          "implicit_acc": gamma(units), "nontie_frac": gamma(units)}
  err_atol = gamma(units + per_unit) * float(np.max([np.abs(x).max() for x in e]))
  for name in METRICS:
    np.testing.assert_allclose(got[name], want[name], rtol=0,
                               atol=sides * atol.get(name, err_atol), err_msg=name)


# ----------------------------------------------------------------------------- values


def test_flow_dpo_matches_reference(rng):
  e, labels, beta = random_errors(rng, (7,)), random_labels(rng, (7,), ties=False), 4.0
  loss, metrics = losses.flow_dpo_loss(*e, labels, beta)
  want = ref_flow(e, labels, beta)
  np.testing.assert_allclose(loss, want["loss"], rtol=0, atol=dpo_atol(e, beta))
  assert_metrics(metrics, want, e, beta)


def test_dense_frame_matches_reference(rng):
  e, labels, beta = random_errors(rng, (5, 6)), random_labels(rng, (5, 6)), 3.0
  labels[2] = 0  # a pair with no non-tie frame contributes nothing and does not divide
  loss, metrics = losses.dense_dpo_loss(*e, labels, beta)
  want = ref_dense(e, labels, beta)
  np.testing.assert_allclose(loss, want["loss"], rtol=0, atol=dpo_atol(e, beta))
  assert_metrics(metrics, want, e, beta)


def test_dense_segment_matches_reference(rng):
  b, t = 4, 8
  e, labels, beta = random_errors(rng, (b, t)), random_labels(rng, (b, t)), 5.0
  segment_ids = np.sort(rng.integers(-1, 4, (b, t)), axis=1)
  segment_ids[:, -1] = 3
  labels[0, segment_ids[0] == 3] = 1  # at least one non-tie segment
  _, metrics = losses.dense_dpo_loss(*e, labels, beta, granularity="segment",
                                     segment_ids=segment_ids)
  assert_metrics(metrics, ref_segment(e, labels, segment_ids, beta), e, beta, per_unit=t)


@pytest.mark.parametrize("s", [1, -1])
def test_dense_one_segment_equals_flow_dpo(rng, s):
  b, t = 5, 7
  e, beta = random_errors(rng, (b, t)), float(rng.uniform(1, 10))
  dense_loss, dense_metrics = losses.dense_dpo_loss(
      *e, np.full((b, t), s), beta, granularity="segment", segment_ids=np.zeros((b, t), int))
  flow_loss, flow_metrics = losses.flow_dpo_loss(*[x.mean(1) for x in e], np.full((b,), s), beta)
  # Two float32 computations (each within dpo_atol of the exact value) of one-segment means.
  np.testing.assert_allclose(dense_loss, flow_loss, rtol=0, atol=2 * dpo_atol(e, beta, t))
  assert_metrics(dense_metrics, flow_metrics, e, beta, per_unit=t, sides=2)


def test_swap_members_and_negate_labels_is_invariant(rng):
  e = random_errors(rng, (4, 5))
  ta, ra, tb, rb = e
  labels, beta = random_labels(rng, (4, 5)), 6.0
  loss, metrics = losses.dense_dpo_loss(ta, ra, tb, rb, labels, beta)
  loss_swapped, metrics_swapped = losses.dense_dpo_loss(tb, rb, ta, ra, -labels, beta)
  np.testing.assert_allclose(loss_swapped, loss, rtol=0, atol=2 * dpo_atol(e, beta))
  assert_metrics(metrics_swapped, metrics, e, beta, sides=2)
  s = random_labels(rng, (4,), ties=False)
  flow, _ = losses.flow_dpo_loss(ta[:, 0], ra[:, 0], tb[:, 0], rb[:, 0], s, beta)
  flow_swapped, _ = losses.flow_dpo_loss(tb[:, 0], rb[:, 0], ta[:, 0], ra[:, 0], -s, beta)
  np.testing.assert_allclose(flow_swapped, flow, rtol=0,
                             atol=2 * dpo_atol([x[:, 0] for x in (ta, ra, tb, rb)], beta))


def test_ties_contribute_nothing(rng):
  e, labels, beta = random_errors(rng, (3, 6)), random_labels(rng, (3, 6)), 4.0
  loss = losses.dense_dpo_loss(*e, labels, beta)[0]
  changed = [np.where(labels == 0, x + rng.uniform(-5, 5, x.shape).astype(np.float32), x)
             for x in e]
  np.testing.assert_allclose(losses.dense_dpo_loss(*changed, labels, beta)[0], loss, rtol=0,
                             atol=2 * dpo_atol(e, beta))
  grads = jax.grad(lambda *e: losses.dense_dpo_loss(*e, labels, beta)[0], argnums=(0, 1, 2, 3))(
      *e)
  for g in grads:
    np.testing.assert_array_equal(np.asarray(g)[labels == 0], 0.0)
    assert np.all(np.asarray(g)[labels != 0] != 0)


@pytest.mark.parametrize("dense", [True, False])
def test_policy_equal_reference_gives_log2(rng, dense):
  shape = (4, 5) if dense else (6,)
  theta_a, theta_b = random_errors(rng, shape)[:2]
  labels = random_labels(rng, shape, ties=dense)
  fn = losses.dense_dpo_loss if dense else losses.flow_dpo_loss
  loss, metrics = fn(theta_a, theta_a, theta_b, theta_b, labels, 7.0)
  np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(metrics["implicit_acc"], 0.5)
  np.testing.assert_allclose(metrics["reward_margin"], 0.0)


# ----------------------------------------------------------------------------- gradients


def numeric_grad(f, xs, h=1e-6):
  """Central differences of a float64 NumPy function of several arrays."""
  xs = [np.asarray(x, np.float64) for x in xs]
  grads = []
  for k, x in enumerate(xs):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
      plus, minus = [y.copy() for y in xs], [y.copy() for y in xs]
      plus[k][idx] += h
      minus[k][idx] -= h
      g[idx] = (f(*plus) - f(*minus)) / (2 * h)
    grads.append(g)
  return grads


def test_dense_gradient_matches_finite_differences(rng):
  e, labels, beta = random_errors(rng, (3, 4)), random_labels(rng, (3, 4)), 3.0
  labels[0, :2], labels[1] = 1, 0
  for granularity, ids in (("frame", None), ("segment", np.array([[0, 0, 1, 1]] * 3))):
    got = jax.grad(lambda *e: losses.dense_dpo_loss(*e, labels, beta, granularity, ids)[0],
                   argnums=(0, 1, 2, 3))(*e)
    if ids is None:
      want = numeric_grad(lambda *e: ref_dense(e, labels, beta)["loss"], e)
    else:
      want = numeric_grad(lambda *e: ref_segment(e, labels, ids, beta)["loss"], e)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=granularity)


def test_flow_dpo_gradient_matches_analytic(rng):
  b = 6
  (ta, ra, tb, rb), labels, beta = random_errors(rng, (b,)), random_labels(rng, (b,), False), 5.0
  got = jax.grad(lambda *e: losses.flow_dpo_loss(*e, labels, beta)[0], argnums=(0, 1, 2, 3))(
      ta, ra, tb, rb)
  s = labels.astype(np.float64)
  z = -(beta / 2) * s * ((ta - ra) - (tb.astype(np.float64) - rb))
  # d/dz -log sigmoid(z) = -(1 - sigmoid(z)) = -sigmoid(-z); dz/d err_theta_a = -(beta/2) s.
  dz = -1.0 / (1.0 + np.exp(z)) / b
  want = [dz * -(beta / 2) * s, dz * (beta / 2) * s, dz * (beta / 2) * s, dz * -(beta / 2) * s]
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- bad input


def test_bad_labels_and_shapes_raise(rng):
  e = random_errors(rng, (2, 3))
  with pytest.raises(ValueError, match="labels must be in"):
    losses.dense_dpo_loss(*e, np.array([[1, 2, 0], [0, 0, -1]]), 1.0)
  with pytest.raises(ValueError, match="labels must be in"):
    losses.flow_dpo_loss(*[x[:, 0] for x in e], np.array([0.5, 1.0]), 1.0)
  with pytest.raises(ValueError, match="every label is a tie"):
    losses.dense_dpo_loss(*e, np.zeros((2, 3), int), 1.0)
  with pytest.raises(ValueError, match="err_ref_b"):
    losses.dense_dpo_loss(*e[:3], e[3][:, :2], np.ones((2, 3)), 1.0)
  with pytest.raises(ValueError, match="labels must have the shape"):
    losses.dense_dpo_loss(*e, np.ones((2, 2)), 1.0)
  with pytest.raises(ValueError, match="2 dims"):
    losses.dense_dpo_loss(*[x[:, 0] for x in e], np.ones(2), 1.0)
  with pytest.raises(ValueError, match="1 dims"):
    losses.flow_dpo_loss(*e, np.ones((2, 3)), 1.0)
  with pytest.raises(ValueError, match="granularity"):
    losses.dense_dpo_loss(*e, np.ones((2, 3)), 1.0, granularity="video")
  with pytest.raises(ValueError, match="segment_ids"):
    losses.dense_dpo_loss(*e, np.ones((2, 3)), 1.0, granularity="segment")
  with pytest.raises(ValueError, match="segment_ids must be < T"):
    losses.dense_dpo_loss(*e, np.ones((2, 3)), 1.0, "segment", np.full((2, 3), 3))
  with pytest.raises(ValueError, match="every segment is a tie"):  # frames disagree in segment 0
    losses.dense_dpo_loss(*e, np.array([[1, -1, 0]] * 2), 1.0, "segment", np.zeros((2, 3), int))


def test_all_tie_and_bad_labels_under_jit(rng):
  e, beta = random_errors(rng, (3, 4)), 2.0
  loss_fn = jax.jit(lambda e, labels: losses.dense_dpo_loss(*e, labels, beta))
  loss, metrics = loss_fn(e, jnp.zeros((3, 4), jnp.int32))
  assert float(loss) == 0.0 and float(metrics["nontie_frac"]) == 0.0
  grads = jax.grad(lambda e: loss_fn(e, jnp.zeros((3, 4), jnp.int32))[0])(e)
  assert all(np.all(np.asarray(g) == 0) for g in grads)
  # Inside jit, values outside {-1, +1} count as ties.
  labels = random_labels(rng, (3, 4))
  bad = np.where(labels == 0, 2, labels)
  np.testing.assert_allclose(loss_fn(e, bad)[0], ref_dense(e, labels, beta)["loss"], rtol=0,
                             atol=dpo_atol(e, beta))


# ----------------------------------------------------------------------------- flow matching


def test_flow_matching_loss_and_per_frame_error(rng):
  v, target = (rng.normal(size=(3, 4, 2, 3, 2)).astype(np.float32) for _ in range(2))
  se = (v.astype(np.float64) - target) ** 2
  rtol = gamma(v.size + 3)  # A mean of n float32 squares of float32 differences.
  np.testing.assert_allclose(losses.flow_matching_loss(v, target)[0], se.mean(), rtol=rtol)
  mask = rng.uniform(size=(3, 4)) > 0.4
  mask[0, 0] = True
  want = se[mask].mean()
  np.testing.assert_allclose(losses.flow_matching_loss(v, target, mask)[0], want, rtol=rtol)
  assert float(losses.flow_matching_loss(v, target, np.zeros(3))[0]) == 0.0
  np.testing.assert_allclose(losses.per_frame_error(v, target), se.mean(axis=(2, 3, 4)),
                             rtol=rtol)
  with pytest.raises(ValueError, match="mask"):
    losses.flow_matching_loss(v, target, np.ones(4))
  with pytest.raises(ValueError, match="v_target"):
    losses.flow_matching_loss(v, target[:2])
  with pytest.raises(ValueError, match=r"\[B, T, H, W, C\]"):
    losses.per_frame_error(v[0], target[0])


# ----------------------------------------------------------------------------- objective variants


@pytest.mark.parametrize("granularity", ["frame", "segment"])
@pytest.mark.parametrize("positive_lambda,pair_reduction,winner_lambda",
                         [(0.7, "mean", 0.0), (0.0, "sum", 0.0), (2.0, "sum", 0.0), (0.0, "mean", 1.5),
                          (0.7, "sum", 0.4)])
def test_objective_variants_match_the_float64_formula(rng, granularity, positive_lambda,
                                                      pair_reduction, winner_lambda):
  """DPO-Positive's hinge per unit, RPO's winner term and summed pairs, against the loop
  reference. The hinge moves a unit's z by beta / 2 * positive_lambda * (a difference of errors),
  rounded like the errors; the winner term adds winner_lambda * (an error, rounded by its
  segment mean and the product); a sum of U units multiplies the loss's rounding by at most U."""
  b, t, beta = 4, 6, 3.0
  e, labels = random_errors(rng, (b, t)), random_labels(rng, (b, t))
  kw = dict(positive_lambda=positive_lambda, pair_reduction=pair_reduction,
            winner_lambda=winner_lambda)
  if granularity == "frame":
    loss, metrics = losses.dense_dpo_loss(*e, labels, beta, **kw)
    want = dpo_units_reference(e, labels, np.ones((b, t), bool), beta, **kw)
    per_unit = 1
  else:
    segment_ids = np.repeat(np.arange(3), 2)[None].repeat(b, 0)
    labels = np.repeat(labels[:, ::2], 2, axis=1)  # Whole segments agree: non-tie segments.
    loss, metrics = losses.dense_dpo_loss(*e, labels, beta, granularity="segment",
                                          segment_ids=segment_ids, **kw)
    want = ref_segment(e, labels, segment_ids, beta, **kw)
    per_unit = 2
  size = float(np.max([np.abs(x).max() for x in e]))
  atol = t * (dpo_atol(e, beta, per_unit) + beta / 2 * positive_lambda * gamma(4) * size
              + winner_lambda * gamma(2 + per_unit) * size + gamma(t + 4) * winner_lambda * size)
  np.testing.assert_allclose(loss, want["loss"], rtol=0, atol=atol)
  np.testing.assert_allclose(metrics["winner_worse_frac"], want["winner_worse_frac"], atol=gamma(b * t))


def test_dpo_positive_stops_the_winner_from_getting_worse(rng):
  """Hand-computed: a wins both units, beta 2. Unit 0 (winner's error 1.0 above its reference
  0.8): z = -(1.0 - 0.8 - 0) = -0.2, z' = z - lambda * 0.2, and d loss / d e_theta(a) =
  sigmoid(-z') (1 + lambda) / 2 (the pair's mean over 2 units). Unit 1 (0.5 below 0.8): the
  hinge is off, sigmoid(-z) / 2 with z = 0.3."""
  e = [np.array([[1.0, 0.5]], np.float32), np.array([[0.8, 0.8]], np.float32),
       np.array([[1.0, 1.0]], np.float32), np.array([[1.0, 1.0]], np.float32)]
  labels = np.array([[1, 1]])
  lam = 0.5
  grad = jax.grad(lambda ta: losses.dense_dpo_loss(ta, *e[1:], labels, 2.0,
                                                   positive_lambda=lam)[0])(jnp.asarray(e[0]))
  sig = lambda x: 1 / (1 + np.exp(-x))
  want = [sig(0.2 + lam * 0.2) * (1 + lam) / 2, sig(-0.3) / 2]
  np.testing.assert_allclose(np.asarray(grad)[0], want, rtol=1e-6)


def test_bad_variant_settings_are_named():
  e = [np.ones((1, 2), np.float32)] * 4
  with pytest.raises(ValueError, match="pair_reduction='max'"):
    losses.dense_dpo_loss(*e, np.array([[1, 1]]), 1.0, pair_reduction="max")
  with pytest.raises(ValueError, match="positive_lambda=-1"):
    losses.dense_dpo_loss(*e, np.array([[1, 1]]), 1.0, positive_lambda=-1)
  with pytest.raises(ValueError, match="winner_lambda=-0.5"):
    losses.flow_dpo_loss(*[x[:, 0] for x in e], np.array([1]), 1.0, winner_lambda=-0.5)


def test_rpo_term_pulls_only_the_winners_error_down():
  """Hand-computed: a wins unit 0, b wins unit 1, beta 2, winner_lambda 0.3, policy equal to the
  reference (z = 0). d loss / d e_theta(a) = [sigmoid(0) + 0.3, -sigmoid(0)] / 2 and
  d loss / d e_theta(b) = [-sigmoid(0), sigmoid(0) + 0.3] / 2 (the pair's mean over 2 units)."""
  e = [np.full((1, 2), 0.5, np.float32) for _ in range(4)]
  labels = np.array([[1, -1]])
  f = lambda ta, tb: losses.dense_dpo_loss(ta, e[1], tb, e[3], labels, 2.0, winner_lambda=0.3)[0]
  ga, gb = jax.grad(f, argnums=(0, 1))(jnp.asarray(e[0]), jnp.asarray(e[2]))
  np.testing.assert_allclose(np.asarray(ga)[0], [(0.5 + 0.3) / 2, -0.5 / 2], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(gb)[0], [-0.5 / 2, (0.5 + 0.3) / 2], rtol=1e-6)
