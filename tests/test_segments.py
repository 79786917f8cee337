"""Segment <-> latent-frame mapping: hand-made cases and a loop reference of the mapping in
docs/training.md."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densedpo_jax.data import segments


@pytest.fixture
def rng():
  seed = int.from_bytes(os.urandom(4), "little")
  print(f"seed={seed}")
  return np.random.default_rng(seed)


def ref_latent_labels(segment_labels, num_frames, fps, r, causal):
  """Loop reference: latent j's pixel frames from the DESIGN formula, label s iff all agree."""
  t = 1 + (num_frames - 1) // r if causal else num_frames // r
  s = segment_labels.shape[-1]
  out = np.zeros(segment_labels.shape[:-1] + (t,), int)
  for idx in np.ndindex(segment_labels.shape[:-1]):
    for j in range(t):
      if causal:
        frames = [0] if j == 0 else range(r * (j - 1) + 1, r * j + 1)
      else:
        frames = range(r * j, r * j + r)
      values = {segment_labels[idx + (min(f // fps, s - 1),)] for f in frames}
      out[idx + (j,)] = values.pop() if len(values) == 1 else 0
  return out


def test_causal_r4_17_frames_hand_made():
  first, last = segments.latent_frame_coverage(17, 4, causal=True)
  np.testing.assert_array_equal(first, [0, 1, 5, 9, 13])
  np.testing.assert_array_equal(last, [0, 4, 8, 12, 16])
  # Two segments of 8 frames (frames 0-7 and 8-16): latent 2 covers frames 5-8 and straddles.
  np.testing.assert_array_equal(segments.latent_frame_labels(np.array([1, -1]), 17, 8, 4),
                                [1, 1, 0, -1, -1])
  np.testing.assert_array_equal(segments.latent_frame_labels(np.array([-1, -1]), 17, 8, 4),
                                [-1] * 5)
  np.testing.assert_array_equal(segments.latent_segment_ids(17, 8, 4, num_segments=2),
                                [0, 0, -1, 1, 1])
  # Five segments of 4 frames (the last is frame 16 alone).
  np.testing.assert_array_equal(
      segments.latent_frame_labels(np.array([1, 1, -1, -1, 0]), 17, 4, 4), [1, 1, 0, -1, 0])
  np.testing.assert_array_equal(segments.latent_segment_ids(17, 4, 4), [0, -1, -1, -1, -1])


def test_r1_is_per_frame_repeat(rng):
  for causal in (True, False):
    labels = rng.choice([-1, 0, 1], (3, 4))
    got = segments.latent_frame_labels(labels, 12, 3, 1, causal=causal)
    np.testing.assert_array_equal(got, np.repeat(labels, 3, axis=-1))
    np.testing.assert_array_equal(segments.latent_segment_ids(12, 3, 1, causal=causal),
                                  np.repeat(np.arange(4), 3))


def test_non_causal_hand_made():
  # 8 frames, r = 2: latents cover (0,1) (2,3) (4,5) (6,7); segments of 3: (0-2) (3-5) (6,7).
  np.testing.assert_array_equal(segments.latent_frame_labels(np.array([1, 1, -1]), 8, 3, 2,
                                                             causal=False), [1, 1, 1, -1])
  np.testing.assert_array_equal(segments.latent_frame_labels(np.array([1, -1, -1]), 8, 3, 2,
                                                             causal=False), [1, 0, -1, -1])


@pytest.mark.parametrize("num_frames,fps,r,causal,num_segments", [
    (17, 4, 4, True, 5), (17, 4, 4, True, 4), (21, 6, 4, True, 4), (16, 5, 2, False, 3),
    (16, 4, 4, False, 4), (9, 2, 1, True, 5)])
def test_batched_matches_reference(rng, num_frames, fps, r, causal, num_segments):
  labels = rng.choice([-1, 0, 1], (2, 3, num_segments)).astype(np.int32)
  want = ref_latent_labels(labels, num_frames, fps, r, causal)
  got = segments.latent_frame_labels(labels, num_frames, fps, r, causal)
  assert isinstance(got, np.ndarray) and got.dtype == np.int32
  np.testing.assert_array_equal(got, want)
  # Same under jit, with JAX arrays.
  jitted = jax.jit(lambda l: segments.latent_frame_labels(l, num_frames, fps, r, causal))
  np.testing.assert_array_equal(jitted(jnp.asarray(labels)), want)


def test_inverse_view(rng):
  for num_frames, r, causal in ((17, 4, True), (16, 4, False), (5, 1, True)):
    first, last = segments.latent_frame_coverage(num_frames, r, causal)
    index = segments.pixel_to_latent_index(num_frames, r, causal)
    for j, (f0, f1) in enumerate(zip(first, last)):
      np.testing.assert_array_equal(np.flatnonzero(index == j), np.arange(f0, f1 + 1))
    values = rng.normal(size=(2, len(first)))
    pixel = segments.latent_to_pixel(values, num_frames, r, causal)
    assert pixel.shape == (2, num_frames)
    np.testing.assert_array_equal(pixel[:, first], values)
    np.testing.assert_array_equal(pixel[:, last], values)


def test_nontie_fraction_and_filter():
  labels = np.array([[1, 0, 0, 0, 0], [1, -1, 0, 0, 0], [0, 0, 0, 0, 0], [1, -1, 1, 1, -1]])
  np.testing.assert_allclose(segments.nontie_fraction(labels), [0.2, 0.4, 0.0, 1.0])
  np.testing.assert_array_equal(segments.keep_pair(labels), [False, True, False, True])
  np.testing.assert_array_equal(segments.keep_pair(labels, min_nontie_frac=0.5),
                                [False, False, False, True])
  np.testing.assert_allclose(segments.nontie_fraction(jnp.asarray(labels)), [0.2, 0.4, 0, 1])


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="num_frames = 1 \\+ k\\*4"):
    segments.latent_frame_labels(np.ones(5), 18, 4, 4)
  with pytest.raises(ValueError, match="divisible by 4"):
    segments.latent_frame_labels(np.ones(5), 17, 4, 4, causal=False)
  with pytest.raises(ValueError, match="3 segments of 4 frames"):
    segments.latent_frame_labels(np.ones(3), 17, 4, 4)
  with pytest.raises(ValueError, match="T'=5"):
    segments.latent_to_pixel(np.ones(4), 17, 4)
