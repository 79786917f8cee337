"""`benchmarks/video_metrics_speed.py`: its clips move as it says, and the command prints a
table whose motion column reads that speed back through H.264."""
import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("av")

from benchmarks import video_metrics_speed  # noqa: E402


def test_the_texture_moves_whole_pixels_at_the_given_speed():
  clip = video_metrics_speed.moving_texture(5, 40, 64, speed=2.0)
  assert clip.shape == (5, 40, 64, 3) and clip.dtype == np.uint8
  for i in range(4):  # Frame i+1 is frame i rolled (1, 2) px: exactly, every pixel.
    np.testing.assert_array_equal(np.roll(clip[i], (1, 2), axis=(0, 1)), clip[i + 1])


def test_the_table_reads_the_known_motion_back(capsys):
  video_metrics_speed.main(["--clips", "1", "--frames", "9", "--height", "96", "--width", "128"])
  out = capsys.readouterr().out
  row = [line for line in out.splitlines() if line.startswith("| 9 x 96 x 128 |")]
  assert len(row) == 1, out
  motion = float(row[0].strip("| ").split("|")[-1])
  assert abs(motion - np.hypot(2.0, 1.0)) < 0.1 * np.hypot(2.0, 1.0), out  # H.264 and edges.
