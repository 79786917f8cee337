"""Video files: PyAV round trips, resampling against hand-computed indices, crops, errors."""
import os

import numpy as np
import pytest

av = pytest.importorskip("av")

from PIL import Image  # noqa: E402

from densedpo_jax.interop import video_io  # noqa: E402
from densedpo_jax.interop.video_io import (  # noqa: E402
    VideoError, conform, frame_times, read_video, side_by_side, to_uint8, write_video)


def smooth_video(num_frames=12, height=64, width=96):
  """uint8 `[F, H, W, 3]`: red/green gradients, blue rising in time, a grey square moving right."""
  y, x = np.mgrid[:height, :width]
  frames = []
  for t in range(num_frames):
    f = np.stack([x * 255 / (width - 1), y * 255 / (height - 1),
                  np.full_like(x, 40 + 10 * t, dtype=float)], -1)
    f[16:32, 4 + 4 * t:20 + 4 * t] = 200
    frames.append(f)
  return np.round(np.stack(frames)).astype(np.uint8)


def test_mp4_round_trip(tmp_path):
  frames = smooth_video()
  path = str(tmp_path / "clip.mp4")
  assert write_video(path, frames, 16) == path
  back, fps = read_video(path)
  assert back.shape == frames.shape and back.dtype == np.uint8
  assert fps == 16.0
  assert np.abs(back.astype(int) - frames).mean() < 4
  assert [p for p in os.listdir(tmp_path) if p != "clip.mp4"] == []  # No temporary left behind.


def test_mp4_odd_size_is_padded_with_edge(tmp_path):
  frames = np.zeros((5, 33, 47, 3), np.uint8)
  frames[..., 0] = 180
  frames[:, -1, :, 1] = 90  # Last row; the padding row copies it.
  path = write_video(str(tmp_path / "odd.mp4"), frames, 8)
  back, fps = read_video(path)
  assert back.shape == (5, 34, 48, 3) and fps == 8.0
  assert np.abs(back[:, :33, :47].astype(int) - frames).mean() < 4
  assert np.abs(back[:, 33, :, 1].astype(int) - 90).mean() < 6


def test_gif_round_trip(tmp_path):
  frames = np.zeros((3, 8, 10, 3), np.uint8)
  frames[0] = (255, 0, 0)
  frames[1] = (0, 0, 255)
  frames[2, :, :5] = (0, 255, 0)
  path = write_video(str(tmp_path / "clip.gif"), frames, 10)
  with Image.open(path) as im:
    assert im.n_frames == 3 and im.size == (10, 8)
    seen = []
    for i in range(3):
      im.seek(i)
      seen.append(np.asarray(im.convert("RGB")))
      assert im.info["duration"] == 100
    assert im.info["loop"] == 0
  assert (seen[0] == (255, 0, 0)).all() and (seen[1] == (0, 0, 255)).all()
  assert (seen[2][:, :5] == (0, 255, 0)).all() and (seen[2][:, 5:] == 0).all()


def test_write_rejects_other_extensions(tmp_path):
  with pytest.raises(ValueError, match=r"clip\.avi.*\.mp4 or \.gif"):
    write_video(str(tmp_path / "clip.avi"), smooth_video(2), 8)
  assert os.listdir(tmp_path) == []


def test_frame_times_hand_computed():
  # 30 -> 16 fps: source positions k * 1.875 = 0, 1.875, 3.75, 5.625, 7.5 (half rounds down).
  assert frame_times(30, 30, 16, 5).tolist() == [0, 2, 4, 6, 7]
  # 24 -> 16 fps: k * 1.5 = 0, 1.5, 3, 4.5, 6, 7.5.
  assert frame_times(24, 24, 16, 6).tolist() == [0, 1, 3, 4, 6, 7]
  assert frame_times(9, 16, 16, 9).tolist() == list(range(9))
  # 8 -> 16 fps repeats: k * 0.5 = 0, 0.5, 1, 1.5, 2.
  assert frame_times(3, 8, 16, 5).tolist() == [0, 0, 1, 1, 2]


def test_frame_times_too_short():
  frame_times(9, 16, 16, 9)  # Exactly long enough.
  with pytest.raises(ValueError, match="9 frames"):
    frame_times(8, 16, 16, 9)
  # 60 frames at 30 fps end at 59.5 / 30 = 1.983 s; frame 32 at 16 fps is at 2.0 s.
  with pytest.raises(ValueError):
    frame_times(60, 30, 16, 33)


def test_conform_picks_1_plus_4k_frames():
  # Two seconds at 30 fps, frames at 0, 1/30, ..., 2.0 s: at 16 fps, 0 .. 2.0 s is 33 frames.
  frames = np.zeros((61, 24, 40, 3), np.uint8)
  frames[:, :, :, 0] = np.arange(61)[:, None, None]  # Each frame tagged by its index.
  out = conform(frames, 30.0, fps=16, height=16, width=32)
  assert out.shape == (33, 16, 32, 3) and out.dtype == np.uint8
  want = np.ceil(np.arange(33) * 30 / 16 - 0.5).astype(int)  # Nearest source, half down.
  assert out[:, 8, 16, 0].tolist() == want.tolist()
  # One frame fewer (1.967 s) no longer reaches 2.0 s: 29 = 1 + 4 * 7 frames.
  assert conform(frames[:60], 30.0, fps=16, height=16, width=32).shape[0] == 29
  assert conform(frames, 30.0, fps=16, height=16, width=32, num_frames=9).shape[0] == 9


def test_conform_resizes_to_cover_and_crops_centre():
  frames = np.zeros((5, 32, 64, 3), np.uint8)
  frames[:, :, :16] = (255, 0, 0)
  frames[:, :, 16:48] = (0, 255, 0)
  frames[:, :, 48:] = (0, 0, 255)
  out = conform(frames, 16, fps=16, height=32, width=32)
  assert out.shape == (5, 32, 32, 3)
  assert (out == (0, 255, 0)).all()
  # Half size first (scale = max(16/32, 16/64)): 32 wide, columns 8..23 are the middle colour.
  small = conform(frames, 16, fps=16, height=16, width=16)
  assert small.shape == (5, 16, 16, 3)
  assert (small[:, :, 1:-1] == (0, 255, 0)).all()
  # Upscale of a tall frame: width decides (scale 2), height crops centrally.
  tall = np.zeros((5, 40, 16, 3), np.uint8)
  tall[:, 10:30] = 255
  up = conform(tall, 16, fps=16, height=32, width=32)
  assert up.shape == (5, 32, 32, 3) and (up == 255).all()  # Rows 12..27 of the source, all white.


def test_conform_argument_errors():
  frames = np.zeros((20, 32, 32, 3), np.uint8)
  with pytest.raises(ValueError, match="multiples of 16"):
    conform(frames, 16, fps=16, height=24, width=32)
  with pytest.raises(ValueError, match="1 \\+ 4 \\* k"):
    conform(frames, 16, fps=16, height=32, width=32, num_frames=8)


def test_conform_too_short_names_path():
  with pytest.raises(VideoError, match="short.mp4.*too short"):
    conform(np.zeros((4, 32, 32, 3), np.uint8), 16, fps=16, height=32, width=32, path="short.mp4")
  with pytest.raises(VideoError, match="short.mp4.*need 17"):
    conform(np.zeros((10, 32, 32, 3), np.uint8), 16, fps=16, height=32, width=32,
            num_frames=17, path="short.mp4")


def test_read_errors_name_the_path(tmp_path):
  missing = str(tmp_path / "missing.mp4")
  with pytest.raises(VideoError, match="missing.mp4.*no such file"):
    read_video(missing)
  noise = tmp_path / "noise.mp4"
  noise.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(VideoError, match="noise.mp4.*cannot decode"):
    read_video(str(noise))
  good = write_video(str(tmp_path / "good.mp4"), smooth_video(4), 8)
  truncated = tmp_path / "truncated.mp4"
  truncated.write_bytes(open(good, "rb").read()[:300])
  with pytest.raises(VideoError, match="truncated.mp4"):
    read_video(str(truncated))


def test_read_empty_stream_and_audio_only(tmp_path):
  empty = str(tmp_path / "empty.avi")  # AVI keeps a track that has no packets; MP4 drops it.
  with av.open(empty, "w") as container:
    stream = container.add_stream("mpeg4", rate=16)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    container.start_encoding()
  with pytest.raises(VideoError, match="empty.avi.*no frames"):
    read_video(empty)
  audio = str(tmp_path / "audio.m4a")
  with av.open(audio, "w") as container:
    stream = container.add_stream("aac", rate=16000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    frame.sample_rate = 16000
    container.mux(stream.encode(frame))
    container.mux(stream.encode())
  with pytest.raises(VideoError, match="audio.m4a.*no video stream"):
    read_video(audio)


def test_side_by_side():
  a = np.full((3, 4, 5, 3), 10, np.uint8)
  b = np.full((3, 4, 6, 3), 20, np.uint8)
  out = side_by_side(a, b, gap=2)
  assert out.shape == (3, 4, 13, 3)
  assert (out[:, :, :5] == 10).all() and (out[:, :, 5:7] == 0).all() and (out[:, :, 7:] == 20).all()
  with pytest.raises(ValueError):
    side_by_side(a, b[:, :3])


def test_to_uint8():
  x = np.array([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 5.0])
  want = np.round((np.clip(x, -1, 1) + 1) * 127.5)
  assert to_uint8(x).tolist() == want.tolist() == [0, 0, 64, 128, 166, 255, 255]
  assert to_uint8(np.zeros((2, 3, 4, 3))).dtype == np.uint8


def test_mp4_codec_is_available():
  assert video_io.MP4_CODEC in av.codecs_available
