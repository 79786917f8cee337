"""Appendix B's loss-difference measurement against closed forms (float64 NumPy)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projects.shapesworld_paper import appendix_b


def test_central_patch_and_blur_keep_outside_pixels():
  assert appendix_b.central_patch(16, 16, 0.5) == (4, 12, 4, 12)
  assert appendix_b.central_patch(16, 16, 0.25) == (6, 10, 6, 10)
  rng = np.random.default_rng()
  video = rng.uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
  patch = (4, 12, 4, 12)
  out = appendix_b.blur_patch(video, 1.5, patch)
  inside = np.zeros((16, 16), bool)
  inside[4:12, 4:12] = True
  np.testing.assert_array_equal(out[:, ~inside], video[:, ~inside])
  assert np.abs(out[:, inside] - video[:, inside]).max() > 0.05
  np.testing.assert_array_equal(appendix_b.blur_patch(video, 0.0, patch), video)
  flat = np.full((2, 16, 16, 3), 0.3, np.float32)
  np.testing.assert_allclose(appendix_b.blur_patch(flat, 2.0, patch), flat, atol=1e-6)


def test_blur_of_a_point_is_the_gaussian():
  sigma = 1.2
  video = np.zeros((1, 16, 16, 1))
  video[0, 8, 8, 0] = 1.0
  out = appendix_b.blur_patch(video, sigma, (0, 16, 0, 16))[0, ..., 0]
  r = int(np.ceil(3 * sigma))
  g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  want = np.outer(g, g) / g.sum() ** 2
  np.testing.assert_allclose(out[8 - r:8 + r + 1, 8 - r:8 + r + 1], want, rtol=1e-12)
  assert out.sum() == pytest.approx(1.0)


def _oracle(x_w):
  """The exact velocity for data that is only `x_w`: v(x_t, t) = (x_t - x_w) / t."""
  def velocity_fn(x_t, t, text, mask):
    del text, mask
    return (x_t - x_w) / t[:, None, None, None, None]
  return velocity_fn


def test_loss_difference_of_the_exact_model_is_the_closed_form():
  # For the winner the exact model has zero error; for the loser its error is (x_l - x_w) / t,
  # so delta = mean_c (x_l - x_w)^2 / t^2: positive where the blur changed pixels, 0 elsewhere.
  rng = np.random.default_rng()
  x_w = rng.uniform(-1, 1, (2, 4, 16, 16, 3))
  patch = (4, 12, 4, 12)
  x_l = np.stack([appendix_b.blur_patch(v, 1.0, patch) for v in x_w])
  eps = rng.normal(size=x_w.shape)
  t = rng.uniform(0.2, 0.9, 2)
  text, mask = jnp.zeros((2, 1, 4)), jnp.ones((2, 1), bool)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  delta = np.asarray(appendix_b.loss_difference(_oracle(f32(x_w)), f32(x_w), f32(x_l), f32(eps),
                                                f32(t), text, mask))
  want = ((x_l - x_w) ** 2).mean(-1) / t[:, None, None, None] ** 2
  np.testing.assert_allclose(delta, want, atol=2e-4, rtol=2e-3)
  assert (delta[:, :, 4:12, 4:12].mean() > 0.01)
  assert np.abs(delta[:, :, :4]).max() < 1e-4


def test_measure_splits_inside_and_outside_and_grows_with_blur():
  rng = np.random.default_rng()
  x_w = rng.uniform(-1, 1, (2, 2, 16, 16, 3)).astype(np.float32)
  patch = (4, 12, 4, 12)
  sigmas = (0.0, 0.5, 2.0)
  fixed_t = lambda key, shape: jnp.full(shape, 0.5)
  res = appendix_b.measure(_oracle(jnp.asarray(x_w)), x_w, jnp.zeros((2, 1, 4)),
                           jnp.ones((2, 1), bool), sigmas, patch, jax.random.key(0), draws=2,
                           t_sampler=fixed_t)
  for i, s in enumerate(sigmas):
    x_l = np.stack([appendix_b.blur_patch(v, s, patch) for v in x_w]).astype(np.float64)
    want_in = (((x_l - x_w) ** 2).mean(-1) / 0.25)[:, :, 4:12, 4:12].mean()
    assert res["inside"][i] == pytest.approx(want_in, rel=2e-3, abs=1e-6)
    assert abs(res["outside"][i]) < 1e-5
  assert abs(res["inside"][0]) < 1e-12 and res["inside"][1] < res["inside"][2]
  assert res["maps"].shape == (3, 16, 16)
