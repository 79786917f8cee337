"""ShapesWorld artifacts and pixel judge: ground truth scores clean, artifacts are caught where
they are, speed and direction are read from the pixels. Pure NumPy, a few seconds."""
import numpy as np
import pytest
import scipy.stats

from densedpo_jax.shapesworld import artifacts
from densedpo_jax.shapesworld import judge
from densedpo_jax.shapesworld import world

CFG = world.WorldConfig()


def _scene(speed, direction="right", start=(8.0, 8.0), colour="red", shape="circle"):
  sc = world.Scene(colour, shape, direction, speed, start)
  return world.render(sc, CFG), sc


def test_parse_prompt_every_world_prompt_and_errors():
  for c, s, d in world.all_combos():
    assert judge.parse_prompt(world.prompt_for(c, s, d)) == (c, s, d)
  assert judge.parse_prompt("A Cyan triangle moves DOWN and to the left") == ("cyan", "triangle", "down-left")
  with pytest.raises(ValueError, match="prompt 'a red blob moves up'"):
    judge.parse_prompt("a red blob moves up")
  with pytest.raises(ValueError, match="prompt must be a str"):
    judge.parse_prompt(3)


def test_ground_truth_scores_near_perfect():
  scores = [judge.judge_video(*(lambda v, sc: (v, sc.prompt))(*world.generate(seed, CFG, split)))
            for seed in range(24) for split in ("train", "heldout")]
  vq = np.array([s.visual_quality for s in scores])
  ta = np.array([s.text_alignment for s in scores])
  assert vq.min() > 0.95
  assert np.mean(ta == 1.0) >= 0.95
  assert max(s.artifact_share for s in scores) == 0.0
  assert min(s.temporal_consistency for s in scores) > 0.95
  assert all(s.frame_quality.shape == (16,) and s.speed.shape == (15,) and s.segment_quality.shape == (4,)
             for s in scores)
  assert not any(s.segment_artifact.any() for s in scores)


def test_empty_video_scores_zero_and_static():
  s = judge.judge_video(-np.ones((16, 16, 16, 3), np.float32), "a red circle moves up")
  assert s.visual_quality == 0.0 and s.artifact_share == 1.0 and not s.moving
  assert s.mean_speed == 0.0 and s.text_alignment == 0.0
  assert s.segment_artifact.all()


def test_wrong_colour_shape_direction_lower_text_alignment_only():
  v, _ = _scene(0.8, "right", colour="green", shape="square")
  right = judge.judge_video(v, "a green square moves to the right")
  assert right.text_alignment == 1.0 and right.detected == ("green", "square", "right")
  for prompt, share in (("a red square moves to the right", 2 / 3), ("a green circle moves to the right", 2 / 3),
                        ("a green square moves to the left", 2 / 3), ("a blue triangle moves up", 0.0)):
    s = judge.judge_video(v, prompt)
    assert s.text_alignment == pytest.approx(share), prompt
    assert s.visual_quality == pytest.approx(right.visual_quality)  # quality does not read the prompt


def test_direction_survives_a_bounce_in_the_first_frames():
  # Starts one pixel from the right wall moving right: bounces within the first two frames.
  margin = world.extent(CFG.radius, "circle")
  v, sc = _scene(1.2, "right", start=(8.0, 16 - margin - 0.6))
  assert world.trajectory(sc, CFG)[1][2, 1] < 0  # really moving left by frame 2
  assert judge.judge_video(v, sc.prompt).detected[2] == "right"


def test_segment_count_and_frames_per_segment():
  v, sc = world.generate(3)
  assert judge.judge_video(v, sc.prompt, frames_per_segment=5).segment_quality.shape == (4,)
  assert judge.judge_video(v, sc.prompt, frames_per_segment=5, num_segments=3).segment_quality.shape == (3,)
  with pytest.raises(ValueError, match="video must be"):
    judge.judge_video(v[..., :2], sc.prompt)


@pytest.mark.parametrize("kind", artifacts.KINDS)
def test_artifacts_lower_quality_monotonically_and_only_in_their_segment(kind):
  for seed in (0, 1, 2):
    v, sc = world.generate(seed)
    clean = judge.judge_video(v, sc.prompt)
    assert np.array_equal(artifacts.corrupt(v, range(4, 8), kind, 0.0, seed), v)
    seg1, frames5 = [], []
    for sev in (0.25, 0.5, 0.75, 1.0):
      bad = artifacts.corrupt(v, artifacts.segment_frames(1, 4, 16), kind, sev, rng=seed)
      assert bad.dtype == np.float32 and bad.min() >= -1 and bad.max() <= 1
      np.testing.assert_array_equal(bad[:4], v[:4])
      np.testing.assert_array_equal(bad[8:], v[8:])
      s = judge.judge_video(bad, sc.prompt)
      np.testing.assert_allclose(np.delete(s.segment_quality, 1), np.delete(clean.segment_quality, 1), atol=0.02)
      seg1.append(s.segment_quality[1])
      frames5.append(s.frame_quality[5])
    assert seg1[0] < clean.segment_quality[1] - 0.1
    assert np.all(np.diff(seg1) < 0), (kind, seed, seg1)
    assert np.all(np.diff(frames5) < 0), (kind, seed, frames5)
    assert seg1[-1] < judge.CLEAN_THRESHOLD and s.segment_artifact.tolist() == [False, True, False, False]
    assert s.artifact_share == pytest.approx(0.25)


def test_artifacts_deterministic_given_seed_and_checked():
  v, _ = world.generate(5)
  for kind in ("deformation", "flicker"):
    a = artifacts.corrupt(v, [2, 3], kind, 0.6, rng=7)
    np.testing.assert_array_equal(a, artifacts.corrupt(v, [2, 3], kind, 0.6, rng=np.random.default_rng(7)))
    assert not np.array_equal(a, artifacts.corrupt(v, [2, 3], kind, 0.6, rng=8))
  with pytest.raises(ValueError, match="kind must be one of"):
    artifacts.corrupt(v, [0], "melt", 0.5)
  with pytest.raises(ValueError, match="severity must be in"):
    artifacts.corrupt(v, [0], "blur", 1.5)
  with pytest.raises(ValueError, match="frames .* out of range"):
    artifacts.corrupt(v, [16], "blur", 0.5)
  mask = np.zeros(16, bool)
  mask[[1, 2]] = True
  np.testing.assert_array_equal(artifacts.corrupt(v, mask, "vanishing", 1.0), artifacts.corrupt(v, slice(1, 3), "vanishing", 1.0))
  assert (artifacts.corrupt(v, [1], "vanishing", 1.0)[1] == -1).all()


def test_speed_and_dynamic_degree_track_true_speed():
  true = [0.05, 0.15, 0.3, 0.6, 0.9, 1.3]
  scores = [judge.judge_video(*(lambda v, sc: (v, sc.prompt))(*_scene(s, d, start=(7.5, 8.0))))
            for s, d in zip(true, ["right", "down", "up-left", "left", "down-right", "up"])]
  measured = [s.mean_speed for s in scores]
  assert np.all(np.diff(measured) > 0), measured  # monotone (Spearman 1)
  np.testing.assert_allclose(measured[:4], true[:4], atol=0.05)  # no bounce at low speed
  assert [s.moving for s in scores] == [False, False, True, True, True, True]
  videos = np.stack([_scene(s)[0] for s in (0.05, 0.1, 0.5, 1.2)])
  out = judge.score_videos(videos, ["a red circle moves to the right"] * 4)
  assert set(out) == {"visual_quality", "temporal_consistency", "dynamic_degree", "fast_share",
                      "mean_speed", "text_alignment", "artifact_share", "off_palette",
                      "background_noise"}
  assert out["dynamic_degree"] == 0.5 and out["visual_quality"] > 0.95
  # Only the 1.2 px/frame clip is faster than the middle of the speed range (0.85).
  assert judge.fast_speed() == 0.5 * (0.2 + 1.5) and out["fast_share"] == 0.25
  # Bigger frames scale the threshold: 0.3 px/frame at 32 px is below 0.4.
  big = world.WorldConfig(height=32, width=32)
  v32 = world.render(world.Scene("red", "circle", "right", 0.3, (16.0, 10.0)), big)
  assert not judge.judge_video(v32, "a red circle moves to the right", config=big).moving


def test_temporal_consistency_drops_with_flicker_and_jitter():
  v, sc = _scene(0.5, "right", start=(8.0, 6.0))
  clean = judge.judge_video(v, sc.prompt).temporal_consistency
  flick = artifacts.corrupt(v, [3, 7, 11], "flicker", 1.0, rng=0)
  fs = judge.judge_video(flick, sc.prompt)
  assert fs.components["colour"] < 0.85 and fs.components["area"] > 0.95
  assert fs.temporal_consistency < clean - 0.04
  # Jitter: every other frame shifted down 2 px away from walls.
  pos = world.trajectory(sc, CFG)[0]
  pos[1::2, 0] += 2.0
  jit = world.render_frames("circle", pos, np.tile([1.0, 0, 0], (16, 1)), np.full(16, 3.0), CFG)
  s = judge.judge_video(jit, sc.prompt)
  assert s.components["smoothness"] < 0.2 and s.visual_quality > 0.95


def test_artifact_rate_by_speed_buckets():
  videos, speeds = [], []
  for i, sp in enumerate((0.2, 0.3, 0.5, 0.6, 1.0, 1.2)):
    v, _ = _scene(sp, "right", start=(8.0, 5.0))
    if sp >= 1.0:
      v = artifacts.corrupt(v, range(8), "vanishing", 1.0)
    videos.append(v)
    speeds.append(sp)
  prompts = ["a red circle moves to the right"] * 6
  rows = judge.artifact_rate_by_speed(np.stack(videos), prompts, true_speeds=speeds, buckets=3)
  assert [r["num_videos"] for r in rows] == [2, 2, 2]
  assert [r["artifact_share"] for r in rows] == [0.0, 0.0, 0.5]
  assert rows[0]["speed_lo"] == 0.2 and rows[2]["speed_hi"] == 1.2
  with pytest.raises(ValueError, match="true_speeds"):
    judge.artifact_rate_by_speed(np.stack(videos), prompts, true_speeds=[1.0, 2.0])
  with pytest.raises(ValueError, match="prompts has 2 entries"):
    judge.score_videos(np.stack(videos), prompts[:2])


def test_ground_truth_has_no_off_palette_light_or_background_noise():
  for seed in range(8):
    v, sc = world.generate(seed, CFG)
    s = judge.judge_video(v, sc.prompt)
    assert s.off_palette == 0.0  # Every pixel of a clean rendering lies on its colour's line.
    # Only anti-aliased edge pixels below the floor that the quarter-pixel fit misses: a few
    # hundredths of a pixel of light against a shape of pi r^2 = 28 pixels.
    assert 0.0 <= s.background_noise < 0.005


def test_background_noise_is_the_faint_light_beyond_the_shape_in_shape_areas():
  v, sc = _scene(0.8)
  clean = judge.judge_video(v, sc.prompt)
  unit = (v.astype(np.float64) + 1.0) / 2.0
  eps = 0.03  # Below the foreground floor, so the fit and the colour are unchanged.
  dark = unit.max(-1) == 0.0  # [T, H, W] background pixels, far from the shape's edge
  noisy_unit = np.where(dark[..., None], np.array([eps, 0.0, eps]), unit)  # magenta haze, max = eps
  noisy = (2.0 * noisy_unit - 1.0).astype(np.float32)
  s = judge.judge_video(noisy, sc.prompt)
  want = eps * dark.sum((1, 2)) / (np.pi * CFG.radius ** 2) + clean.frame_background_noise  # [T]
  np.testing.assert_allclose(s.frame_background_noise, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(s.frame_quality, clean.frame_quality * (1.0 - want), rtol=1e-5)
  assert s.off_palette == clean.off_palette == 0.0  # Light below the floor is not foreground.


def test_off_palette_is_the_share_of_foreground_light_off_the_colour_line():
  v, sc = _scene(0.8)  # red
  unit = (v.astype(np.float64) + 1.0) / 2.0
  clean = judge.judge_video(v, sc.prompt)
  a = unit.max(-1)
  # One hue everywhere: off_palette is the old colour distance |chroma - red|.
  tint = unit + a[..., None] * np.array([0.0, 0.3, 0.0])
  s = judge.judge_video((2.0 * tint - 1.0).astype(np.float32), sc.prompt)
  np.testing.assert_allclose(s.frame_off_palette, 0.3, rtol=1e-5)
  np.testing.assert_allclose(s.frame_quality, clean.frame_quality * 0.7, rtol=1e-4)
  # Two full pixels of green inside the shape of frame 0: each is sqrt(2) off red's line.
  inside = np.argwhere(a[0] == 1.0)[:2]
  spotted = unit.copy()
  for y, x in inside:
    spotted[0, y, x] = (0.0, 1.0, 0.0)
  fg = a[0] >= judge.NOISE_FLOOR
  want = 2 * np.sqrt(2.0) / a[0][fg].sum()
  s = judge.judge_video((2.0 * spotted - 1.0).astype(np.float32), sc.prompt)
  assert s.frame_off_palette[0] == pytest.approx(want, rel=1e-5)
  np.testing.assert_array_equal(s.frame_off_palette[1:], 0.0)


def test_segment_oracle_prefers_the_segment_without_haze():
  import types
  from densedpo_jax.labeling import oracle
  v, sc = _scene(0.8)
  unit = (v.astype(np.float64) + 1.0) / 2.0
  hazy = unit.copy()
  hazy[8:12] = np.where(unit[8:12].max(-1, keepdims=True) == 0.0, 0.04, unit[8:12])  # segment 2
  b = (2.0 * hazy - 1.0).astype(np.float32)
  pair = types.SimpleNamespace(id="p", prompt=sc.prompt, num_frames=16, frames_per_segment=4,
                               num_segments=4)
  seg, glob = oracle.SegmentOracle(tie_margin=0.014).label(pair, v, b)
  assert seg.tolist() == [0, 0, 1, 0] and glob == 1


def test_calibration_card_reads_clean_clips_and_ranks_speeds():
  from densedpo_jax.shapesworld import calibration
  truth = calibration.ground_truth_card(6)
  assert truth["visual_quality"] > 0.95 and truth["max_off_palette"] == 0.0
  speeds = [world.generate(k // 2, split=("train", "heldout")[k % 2])[1].speed for k in range(6)]
  measured = [judge.judge_video(*(lambda v, sc: (v, sc.prompt))(
      *world.generate(k // 2, split=("train", "heldout")[k % 2]))).mean_speed for k in range(6)]
  want = scipy.stats.spearmanr(measured, speeds).statistic  # An independent Spearman.
  assert truth["speed_spearman"] == pytest.approx(want)
  kinds = calibration.artifact_card(1)
  assert set(kinds) == set(artifacts.KINDS)
  for row in kinds.values():
    assert np.all(np.diff(row["segment_quality"]) < 0)
  assert "| flicker |" in calibration.card_markdown(truth, kinds)
  with pytest.raises(ValueError, match="--clips must be >= 2"):
    calibration.ground_truth_card(1)
