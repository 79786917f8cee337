"""Motion and temporal metrics of video files (densedpo_jax/metrics/temporal.py,
densedpo_jax/video_metrics.py) on MP4s and GIFs the tests write: a smooth random texture seen
through a sliding window (a known global translation), a still clip, a flickering still clip;
VBench's dynamic-degree rule on hand-computed scores; unreadable files named and skipped."""
import json
import os

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
av = pytest.importorskip("av")

from densedpo_jax import video_metrics  # noqa: E402
from densedpo_jax.interop import video_io  # noqa: E402
from densedpo_jax.metrics import temporal  # noqa: E402

SIZE = 96


def _texture(rng, height, width, blur=2.5):
  """A smooth random RGB texture, uint8, contrast stretched to [0, 255]."""
  x = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32), (0, 0), blur)
  x = (x - x.min()) / (x.max() - x.min())
  return (255 * x).astype(np.uint8)


def _translating(rng, frames, dx, dy, size=SIZE):
  """`[F, size, size, 3]`: a window moving (dx, dy) px a frame over a larger texture, so the
  content moves by (-dx, -dy) px a frame in the picture."""
  tex = _texture(rng, size + abs(dy) * frames + 1, size + abs(dx) * frames + 1)
  x0, y0 = (0 if dx >= 0 else -dx * frames), (0 if dy >= 0 else -dy * frames)
  return np.stack([tex[y0 + dy * i:y0 + dy * i + size, x0 + dx * i:x0 + dx * i + size]
                   for i in range(frames)])


def _write(path, frames, fps=8):
  video_io.write_video(str(path), frames, fps)
  return str(path)


@pytest.mark.parametrize("dx,dy", [(2, 0), (0, 3), (2, 2)])
def test_a_known_translation_reads_as_its_speed(tmp_path, dx, dy):
  """The window moves sqrt(dx^2 + dy^2) px a frame. Tolerance 10%: DIS is within 1% on the
  uncompressed texture; the strip of new content entering at the edge (|dx| or |dy| px of 96,
  at most 3%) has no true match, and H.264 at crf 18 perturbs the texture's gradients."""
  rng = np.random.default_rng(abs(dx) * 10 + abs(dy))
  path = _write(tmp_path / "move.mp4", _translating(rng, 12, dx, dy))
  frames, fps = video_metrics.read_frames(path)
  assert frames.shape == (12, SIZE, SIZE, 3) and fps == pytest.approx(8.0)
  m = temporal.video_metrics(frames, fps)
  assert m["motion_px_per_frame"] == pytest.approx(np.hypot(dx, dy), rel=0.10)
  # VBench's threshold at 96 px is 6 * 96 / 256 = 2.25 px: 2 px/frame does not move, 3 does.
  assert m["dynamic_degree"] == float(np.hypot(dx, dy) > 2.25)
  # Warping error against the exact shift on the same decoded frames (what the codec left):
  # frame i at p is frame i + 1 at p - (dx, dy). Within 0.005 (1.3 grey levels): DIS's sub-pixel
  # error on this smooth texture, and the entering strip that the visibility check drops.
  ref = np.mean([np.abs(frames[i, dy:, dx:].astype(float) - frames[i + 1, :SIZE - dy, :SIZE - dx])
                 .mean() / 255 for i in range(len(frames) - 1)])
  assert m["warping_error"] == pytest.approx(ref, abs=0.005)
  assert m["occluded_share"] < 0.1  # The entering strip (at most 6% of the picture) and noise.


def test_a_still_clip_and_a_flickering_one_do_not_move(tmp_path):
  rng = np.random.default_rng(5)
  still = np.repeat(_texture(rng, SIZE, SIZE)[None], 12, axis=0)
  # Brightness alternating by 24 levels a frame (clipped where the texture saturates).
  flicker = np.clip(still.astype(int) + np.where(np.arange(12) % 2, 12, -12)[:, None, None, None],
                    0, 255).astype(np.uint8)
  m_still = temporal.video_metrics(*video_metrics.read_frames(_write(tmp_path / "s.mp4", still)))
  m_flick = temporal.video_metrics(*video_metrics.read_frames(_write(tmp_path / "f.mp4", flicker)))
  assert m_still["motion_px_per_frame"] < 0.05 and m_still["dynamic_degree"] == 0.0
  assert m_still["temporal_flickering"] > 0.995
  assert m_flick["motion_px_per_frame"] < 0.25 and m_flick["dynamic_degree"] == 0.0
  # Mean absolute change about 24 levels (less where the texture clips): (255 - 24) / 255.
  want = (255 - np.abs(np.diff(flicker.astype(float), axis=0)).mean()) / 255
  assert m_flick["temporal_flickering"] == pytest.approx(want, abs=0.005)
  assert m_flick["temporal_flickering"] < m_still["temporal_flickering"] - 0.05


def test_temporal_flickering_against_a_float64_formula():
  rng = np.random.default_rng()
  frames = rng.integers(0, 256, size=(5, 8, 10, 3)).astype(np.uint8)
  mae = [np.mean(np.abs(frames[i + 1].astype(np.float64) - frames[i])) for i in range(4)]
  assert temporal.temporal_flickering(frames) == pytest.approx((255 - np.mean(mae)) / 255, abs=1e-9)


def test_vbench_dynamic_degree_rule_on_hand_computed_scores():
  # Sampling interval max(1, round(fps / 8)), with Python's half-to-even round.
  assert [temporal.vbench_interval(f) for f in (4, 8, 12, 16, 20, 24, 30, 60)] == \
      [1, 1, 2, 2, 2, 3, 4, 8]
  # 256 x 448: threshold 6 px; 16 sampled frames need 4 pairs strictly above it.
  assert not temporal.vbench_moves([6.0] * 15, 16, 256, 448)
  assert temporal.vbench_moves([6.01] * 4 + [0.0] * 11, 16, 256, 448)
  assert not temporal.vbench_moves([6.01] * 3 + [0.0] * 12, 16, 256, 448)
  # 480 x 832: threshold 11.25; 81 frames at 16 fps sample 41 frames: round(10.25) = 10 pairs.
  assert temporal.vbench_moves([11.3] * 10 + [0.0] * 30, 41, 480, 832)
  assert not temporal.vbench_moves([11.3] * 9 + [20.0] * 0 + [11.25] * 31, 41, 480, 832)
  # Two sampled frames need round(0.5) = 0 pairs: VBench counts inside its loop, so it moves.
  assert temporal.vbench_moves([0.0], 2, 256, 256)
  # The per-pair score: the mean of the largest int(0.05 * size) magnitudes.
  mag = np.arange(100, dtype=np.float64).reshape(10, 10)
  assert temporal.top_share_mean(mag) == pytest.approx(np.mean([99, 98, 97, 96, 95]))
  assert temporal.pad_to_multiple(np.zeros((13, 17), np.uint8)).shape == (16, 24)


def test_unrelated_frames_warp_badly():
  rng = np.random.default_rng(2)
  frames = np.stack([_texture(rng, SIZE, SIZE) for _ in range(4)])
  m = temporal.video_metrics(frames, 8.0)
  assert m["occluded_share"] > 0.3
  moving = temporal.video_metrics(_translating(rng, 4, 2, 0), 8.0)
  assert m["warping_error"] is None or m["warping_error"] > 3 * moving["warping_error"]


def _folder(tmp_path):
  rng = np.random.default_rng(9)
  root = tmp_path / "videos"
  (root / "sub").mkdir(parents=True)
  _write(root / "a.mp4", _translating(rng, 8, 2, 0))
  _write(root / "sub" / "b.mp4", _translating(rng, 8, 0, 3))
  frames = _translating(rng, 8, 3, 0)
  from PIL import Image
  Image.fromarray(frames[0]).save(root / "c.gif", save_all=True, duration=100, loop=0,
                                  append_images=[Image.fromarray(f) for f in frames[1:]])
  (root / "empty.mp4").write_bytes(b"")
  (root / "notes.mp4").write_text("not a video")
  good = (root / "a.mp4").read_bytes()
  (root / "truncated.mp4").write_bytes(good[:len(good) // 2])
  return root


def test_a_folder_is_scored_and_bad_files_are_named_and_skipped(tmp_path, capsys):
  root = _folder(tmp_path)
  out = str(tmp_path / "metrics.json")
  video_metrics.main(["--videos", str(root), "--out", out])
  result = json.load(open(out))
  scored = {os.path.basename(v["file"]): v for v in result["videos"]}
  assert set(scored) == {"a.mp4", "b.mp4", "c.gif"}
  assert scored["c.gif"]["fps"] == pytest.approx(10.0) and scored["c.gif"]["num_frames"] == 8
  for name, speed in (("a.mp4", 2), ("b.mp4", 3), ("c.gif", 3)):
    assert scored[name]["motion_px_per_frame"] == pytest.approx(speed, rel=0.10), name
  errors = {os.path.basename(s["file"]): s["error"] for s in result["skipped"]}
  assert set(errors) == {"empty.mp4", "notes.mp4", "truncated.mp4"}
  assert "empty file (0 bytes)" in errors["empty.mp4"]
  assert all(name in error for name, error in errors.items())
  s = result["summary"]
  assert (s["videos"], s["skipped"]) == (3, 3)
  assert s["motion_px_per_frame_mean"] == pytest.approx(
      np.mean([v["motion_px_per_frame"] for v in result["videos"]]))
  assert not os.path.exists(out + ".partial.jsonl")
  assert "3 videos scored, 3 skipped" in capsys.readouterr().out


def test_an_interrupted_run_resumes_without_scoring_twice(tmp_path, monkeypatch):
  root = _folder(tmp_path)
  out = str(tmp_path / "m.json")
  items = video_metrics.list_videos(str(root))
  calls = []
  real = temporal.video_metrics

  def counted(frames, fps):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt  # Stopped while scoring the second readable video.
    return real(frames, fps)
  monkeypatch.setattr(temporal, "video_metrics", counted)
  with pytest.raises(KeyboardInterrupt):
    video_metrics.score_videos(items, out, log=lambda line: None)
  assert not os.path.exists(out)
  calls.clear()
  monkeypatch.setattr(temporal, "video_metrics", lambda f, fps: (calls.append(1), real(f, fps))[1])
  result = video_metrics.score_videos(items, out, log=lambda line: None)
  assert len(calls) == 2  # The first readable video was kept; the other two are scored now.
  assert len(result["videos"]) == 3 and len(result["skipped"]) == 3


def test_an_index_names_pair_members_and_a_folder_without_videos_is_an_error(tmp_path):
  rng = np.random.default_rng(4)
  (tmp_path / "p0").mkdir()
  for member in ("a", "b", "pair"):
    _write(tmp_path / "p0" / f"{member}.mp4", _translating(rng, 6, 1, 0))
  _write(tmp_path / "v0.mp4", _translating(rng, 6, 1, 0))
  lines = [{"id": "p0", "kind": "pair", "prompt": "a red circle",
            "files": {m: f"p0/{m}.mp4" for m in ("a", "b", "pair")}},
           {"id": "v0", "kind": "video", "prompt": "a square", "files": {"video": "v0.mp4"}}]
  index = tmp_path / "index.jsonl"
  index.write_text("".join(json.dumps(line) + "\n" for line in lines))
  items = video_metrics.list_videos(str(index))
  assert [(i["id"], i.get("member"), i["prompt"]) for i in items] == [
      ("p0", "a", "a red circle"), ("p0", "b", "a red circle"), ("v0", None, "a square")]
  (tmp_path / "nothing").mkdir()
  with pytest.raises(SystemExit, match=r"nothing: no video files"):
    video_metrics.list_videos(str(tmp_path / "nothing"))
  (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
  with pytest.raises(SystemExit, match=r"bad.jsonl line 1: expected a decode index line"):
    video_metrics.list_videos(str(tmp_path / "bad.jsonl"))


@pytest.mark.e2e
def test_flow_motion_agrees_with_the_shapesworld_judge_on_base_model_samples(tmp_path):
  """The shipped base model's samples of every held-out prompt (2 seeds, 16 steps), scored by the
  ShapesWorld judge (centroid tracking, `mean_speed`) and by optical flow at the samples' own
  16 x 16 pixels. Spearman's rank correlation over the 36 samples measured 0.925 (mean motion)
  and 0.947 (peak motion) on a 2-vCPU CPU; the floor 0.78 is below the lower 3-sigma Fisher
  bound of 0.925 at n = 36 (atanh 0.925 - 3 x 1.06 / sqrt(33) = 1.07, tanh 1.07 = 0.79): another
  machine's rounding moves the samples far less than that."""
  from scipy import stats as scipy_stats
  from configs import evaluate as evaluate_config
  from densedpo_jax import previews
  from densedpo_jax.data import tfds_builder
  from densedpo_jax.objectives import sampling
  from densedpo_jax.shapesworld import judge
  from densedpo_jax.tasks import evaluate
  from densedpo_jax.training.builders import model_config, with_overrides
  c = with_overrides(evaluate_config.get_config(), **{
      "init_from": "assets/shapesworld_base", "evaluate.seeds_per_prompt": 2,
      "evaluate.num_steps": 16})
  records = evaluate.prompt_set(tfds_builder.shapesworld_source("heldout", str(tmp_path)), 64)
  cfg = model_config(c)
  videos = evaluate.sample_model(sampling.load_exported_params(c.init_from, cfg), records,
                                 c.evaluate, cfg)
  speeds = [s.mean_speed for s in judge.judge_videos(
      videos, [r.prompt for r in records for _ in range(2)], 4)]
  rows = [temporal.video_metrics(v, records[0].fps) for v in previews.to_uint8(videos)]
  for metric in ("motion_px_per_frame", "peak_motion_px_per_frame"):
    rho = scipy_stats.spearmanr(speeds, [r[metric] for r in rows])[0]
    print(f"{metric}: Spearman {rho:.3f} against the judge's mean speed over {len(rows)} samples")
    assert rho >= 0.78, metric


def test_the_evaluation_table_orders_every_video_metric():
  from densedpo_jax.tasks import evaluate
  assert set(temporal.METRICS) <= set(evaluate.COLUMNS)
