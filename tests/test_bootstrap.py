"""Paired bootstrap intervals over prompts (densedpo_jax/metrics/bootstrap.py): against a direct
float64 resampling, and their coverage of a known difference."""
import numpy as np
import pytest

from densedpo_jax.metrics.bootstrap import bootstrap_diff


def test_paired_bootstrap_matches_a_direct_resampling():
  rng = np.random.default_rng()
  a, b = rng.normal(0.5, 0.1, 30), rng.normal(0.45, 0.1, 30)
  mean, lo, hi = bootstrap_diff(a, b, num=4000, seed=3)
  # Reference: the same resampling written out with a loop, in float64.
  idx = np.random.default_rng(3).integers(0, 30, size=(4000, 30))
  boot = np.array([np.mean(a[i] - b[i]) for i in idx])
  assert mean == pytest.approx(np.mean(a - b), abs=1e-12)
  assert (lo, hi) == pytest.approx((np.percentile(boot, 2.5), np.percentile(boot, 97.5)), abs=1e-12)
  # A shift common to every prompt moves the interval by exactly that shift (pairing).
  lo2, hi2 = bootstrap_diff(a + 0.3, b, num=4000, seed=3)[1:]
  assert (lo2 - lo, hi2 - hi) == pytest.approx((0.3, 0.3), abs=1e-12)


def test_intervals_cover_the_true_difference_at_about_the_nominal_rate():
  """400 synthetic experiments of 40 prompts, true paired difference 0.1 (a prompt effect
  shared by both models, which pairing cancels). The percentile interval of a mean of n = 40
  normal values covers like a z-interval with the plug-in sd, P(|t_39| < 1.96 sqrt(39/40)) =
  0.940; 400 trials add a binomial sd of 0.012: the bound is 0.940 +- 4 sd."""
  rng = np.random.default_rng(11)
  covered = 0
  for k in range(400):
    prompt = rng.normal(0, 1.0, 40)  # Large, shared: only pairing gives narrow intervals.
    a = prompt + 0.1 + rng.normal(0, 0.2, 40)
    b = prompt + rng.normal(0, 0.2, 40)
    _, lo, hi = bootstrap_diff(a, b, num=1000, seed=k)
    covered += lo <= 0.1 <= hi
  assert 0.940 - 4 * 0.012 <= covered / 400 <= 0.940 + 4 * 0.012


def test_bad_input_is_named():
  with pytest.raises(ValueError, match=r"per-prompt values \[P\], P >= 2; got shape \(1,\)"):
    bootstrap_diff(np.ones(1))
