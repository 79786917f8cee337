"""Preview images: value mapping, layout, and GIF frames read back."""
import numpy as np
from PIL import Image

from densedpo_jax import previews


def test_to_uint8_maps_the_range_and_greys_out_latents():
  x = np.array([-1.0, 0.0, 1.0, 2.0, -3.0], np.float32).reshape(5, 1)
  rgb = previews.to_uint8(np.repeat(x, 3, axis=1))
  np.testing.assert_array_equal(rgb[:, 0], [0, 128, 255, 255, 0])  # round(127.5) = 128
  latent = np.array([[0.5, -0.5, 1.0, 1.0]], np.float32)  # C = 4: mean 0.5 -> 1.5 * 127.5 = 191.25
  np.testing.assert_array_equal(previews.to_uint8(latent), [[191, 191, 191]])


def test_grid_puts_time_across_and_videos_down():
  rng = np.random.default_rng()
  videos = rng.uniform(-1, 1, size=(2, 3, 4, 5, 3)).astype(np.float32)
  g = previews.grid(videos)
  assert g.shape == (2 * 4, 3 * 5, 3)
  n, t = 1, 2
  want = np.round((videos[n, t] + 1) * 127.5).astype(np.uint8)
  np.testing.assert_array_equal(g[n * 4:(n + 1) * 4, t * 5:(t + 1) * 5], want)


def test_gif_round_trip(tmp_path):
  videos = np.zeros((2, 3, 4, 4, 3), np.float32) - 1.0
  videos[0, 1] = 0.0  # Distinct frames (a GIF writer may merge identical ones).
  videos[1, 2] = 1.0  # The second video's last frame is white.
  path = str(tmp_path / "a.gif")
  previews.save_gif(path, videos, scale=2)
  gif = Image.open(path)
  assert gif.n_frames == 3 and gif.size == (2 * 4 * 2, 4 * 2)
  gif.seek(2)
  frame = np.asarray(gif.convert("RGB"))
  assert frame[:, :8].max() == 0 and frame[:, 8:].min() == 255
