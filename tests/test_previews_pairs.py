"""Previews for people: upscaling, segment label strips, pair previews, captions, GIF files."""
import sys

import numpy as np
import pytest
from PIL import Image

import densedpo_jax.interop as interop
from densedpo_jax import previews

WIN, LOSE, TIE, UNLABELED = (46, 160, 67), (214, 39, 40), (150, 150, 150), (40, 40, 40)


def _pair(t=16, h=16, w=16, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, size=(t, h, w, 3), dtype=np.uint8),
          rng.integers(0, 256, size=(t, h, w, 3), dtype=np.uint8))


def test_label_colours_are_the_documented_ones():
  assert (previews.WIN, previews.LOSE, previews.TIE, previews.UNLABELED) == (WIN, LOSE, TIE,
                                                                            UNLABELED)


def test_upscale_uses_the_smallest_integer_factor():
  frames = np.arange(2 * 16 * 16 * 3, dtype=np.uint8).reshape(2, 16, 16, 3)
  big = previews.upscale(frames)
  assert big.shape == (2, 128, 128, 3)  # k = 8
  assert (big[1, 8 * 5:8 * 6, 8 * 7:8 * 8] == frames[1, 5, 7]).all()
  tall = np.zeros((100, 60, 3), np.uint8)
  tall[99, 59] = 7
  out = previews.upscale(tall, min_side=128)  # 60 * 2 = 120 < 128 <= 60 * 3
  assert out.shape == (300, 180, 3)
  assert (out[297:, 177:] == 7).all() and out[:297].max() == 0 and out[:, :177].max() == 0
  assert previews.upscale(frames, min_side=8).shape == frames.shape  # k = 1, never down


def test_segment_of_frames():
  np.testing.assert_array_equal(previews.segment_of_frames(16, 4, 4),
                                [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
  np.testing.assert_array_equal(previews.segment_of_frames(17, 4, 4),
                                [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3])
  np.testing.assert_array_equal(previews.segment_of_frames(9, 4, 3), [0, 0, 0, 0, 1, 1, 1, 1, 2])


def test_label_strip_colours_swap_for_member_b():
  labels = [1, -1, 0, None]
  a = previews.label_strip_colours(labels, "a", 2, 8)
  b = previews.label_strip_colours(np.array([1, -1, 0, 0]), "b", 2, 8)
  assert a.dtype == np.uint8 and a.shape == (8, 3)
  np.testing.assert_array_equal(a, [WIN, WIN, LOSE, LOSE, TIE, TIE, UNLABELED, UNLABELED])
  np.testing.assert_array_equal(b, [LOSE, LOSE, WIN, WIN, TIE, TIE, TIE, TIE])
  np.testing.assert_array_equal(previews.label_strip_colours(None, "b", 2, 3), [UNLABELED] * 3)


def test_pair_preview_layout_strips_and_gap():
  a, b = _pair()
  out = previews.pair_preview(a, b, [1, -1, 0, 1], frames_per_segment=4)
  # 16 px -> 128 px (k = 8); strip max(4, 128 // 16) = 8 px; 128 + 4 + 128 wide.
  assert out.dtype == np.uint8 and out.shape == (16, 136, 260, 3)
  strip_a, strip_b = out[:, 128:136, :128], out[:, 128:136, 132:]
  for f, (ca, cb) in {0: (WIN, LOSE), 5: (LOSE, WIN), 9: (TIE, TIE), 15: (WIN, LOSE)}.items():
    assert (strip_a[f] == ca).all() and (strip_b[f] == cb).all(), f
  assert out[:, :, 128:132].max() == 0  # The gap is black, strips included.
  f, i, j = 3, 10, 6  # Input pixel (i, j) fills the 8 x 8 block at (8i, 8j).
  assert (out[f, 8 * i:8 * i + 8, 8 * j:8 * j + 8] == a[f, i, j]).all()
  assert (out[f, 8 * i:8 * i + 8, 132 + 8 * j:132 + 8 * j + 8] == b[f, i, j]).all()
  np.testing.assert_array_equal(out[7, :128, 132:], b[7].repeat(8, 0).repeat(8, 1))


def test_pair_preview_unlabeled_float_input_and_strip_height():
  a = np.full((5, 16, 16, 3), -1.0, np.float32)  # Float video in [-1, 1]: black.
  b = np.full((5, 16, 16, 3), 1.0, np.float32)  # White.
  out = previews.pair_preview(a, b, None, strip_height=3, min_side=32)  # k = 2
  assert out.shape == (5, 32 + 3, 32 + 4 + 32, 3)
  assert (out[:, 32:, :32] == UNLABELED).all() and (out[:, 32:, 36:] == UNLABELED).all()
  assert out[:, :32, :32].max() == 0 and out[:, :32, 36:].min() == 255


def test_caption_adds_a_band_with_text():
  a, b = _pair(t=4)
  plain = previews.pair_preview(a, b, [1], frames_per_segment=4)
  short = previews.pair_preview(a, b, [1], frames_per_segment=4, caption="a red ball bounces")
  assert short.shape == (4, 136 + 14, 260, 3)  # One 14 px line.
  band = short[:, :14]
  assert band.max() > 0 and (band == band[0]).all()  # Text drawn, the same on every frame.
  np.testing.assert_array_equal(short[:, 14:], plain)
  long = previews.pair_preview(a, b, [1], frames_per_segment=4, caption="word " * 40)
  assert long.shape[0] == 4 and long.shape[1] > 136 + 14 and (long.shape[1] - 136) % 14 == 0


def _nearest(colour):
  names = {"WIN": WIN, "LOSE": LOSE, "TIE": TIE, "UNLABELED": UNLABELED}
  return min(names, key=lambda n: np.abs(np.subtract(names[n], colour, dtype=int)).sum())


def test_save_video_gif_round_trip(tmp_path):
  a, b = _pair(t=8)
  frames = previews.pair_preview(a, b, [1, -1], frames_per_segment=4, min_side=32)
  path = str(tmp_path / "sub" / "pair.gif")
  previews.save_video(path, frames, fps=4)
  gif = Image.open(path)
  assert gif.n_frames == 8 and gif.size == (frames.shape[2], frames.shape[1])
  assert gif.info["duration"] == 250 and gif.info["loop"] == 0
  for f, (ca, cb) in {0: ("WIN", "LOSE"), 6: ("LOSE", "WIN")}.items():
    gif.seek(f)
    rgb = np.asarray(gif.convert("RGB"))
    assert _nearest(rgb[34, 10]) == ca and _nearest(rgb[34, 36 + 10]) == cb  # Strip row 32..35.
    assert np.abs(rgb[34, 10].astype(int) - (WIN, LOSE)[f > 3]).max() <= 8


def test_captioned_grid_shape():
  rng = np.random.default_rng(1)
  videos = rng.uniform(-1, 1, size=(3, 5, 16, 16, 3)).astype(np.float32)
  g = previews.captioned_grid(videos, ["prompt 0: score 0.9", "p1", "p2"], min_side=64)
  assert g.dtype == np.uint8 and g.shape == (3 * (14 + 64), 5 * 64, 3)  # k = 4
  row, t = 1, 2  # Row 1 begins after 1 * 78 px; its frames 64 px below its caption band.
  top = 78 + 14
  want = np.round((videos[row, t] + 1) * 127.5).astype(np.uint8).repeat(4, 0).repeat(4, 1)
  np.testing.assert_array_equal(g[top:top + 64, t * 64:(t + 1) * 64], want)
  assert g[78:92].max() > 0  # The caption "p1" is drawn.


def test_save_video_mp4_goes_to_video_io_and_explains_a_missing_pyav(tmp_path, monkeypatch):
  frames = np.zeros((2, 4, 4, 3), np.uint8)
  calls = []
  fake = type(sys)("video_io")
  fake.write_video = lambda path, f, fps: calls.append((path, f.shape, fps))
  monkeypatch.setitem(sys.modules, "densedpo_jax.interop.video_io", fake)
  monkeypatch.setattr(interop, "video_io", fake, raising=False)
  previews.save_video(str(tmp_path / "x.mp4"), frames, fps=16)
  assert calls == [(str(tmp_path / "x.mp4"), (2, 4, 4, 3), 16)]
  monkeypatch.setitem(sys.modules, "densedpo_jax.interop.video_io", None)  # As without PyAV.
  monkeypatch.delattr(interop, "video_io")
  with pytest.raises(ImportError, match="PyAV"):
    previews.save_video(str(tmp_path / "y.mp4"), frames, fps=16)
  with pytest.raises(ValueError, match="unsupported extension"):
    previews.save_video(str(tmp_path / "z.avi"), frames, fps=16)
