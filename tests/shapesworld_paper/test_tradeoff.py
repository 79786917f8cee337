"""The trade-off picture and the adoption bar, on hand-made per-prompt results."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from densedpo_jax.metrics.bootstrap import bootstrap_diff
from projects.shapesworld_paper import stats, tradeoff


def _runs(fast, vq, speed=None):
  """One run whose every metric is given per prompt, under eval seeds '1' and '2' alike."""
  speed = vq if speed is None else speed
  pp = {"fast_share": list(fast), "visual_quality": list(vq), "mean_speed": list(speed)}
  return [{"eval": {s: {"per_prompt": pp} for s in ("1", "2")}}]


P = 12
BASE = _runs([0.5] * P, [0.80] * P, [0.85] * P)
VANILLA = _runs([0.3] * P, [0.81] * P, [0.75] * P)
KEEPS = _runs([0.5, 0.6] * (P // 2), [0.83, 0.84] * (P // 2), [0.85, 0.87] * (P // 2))
SLOWS = _runs([0.3, 0.4] * (P // 2), [0.85, 0.86] * (P // 2), [0.80, 0.81] * (P // 2))
BY_ARM = {"pretrained": BASE, "vanilla": VANILLA, "dense:pos=1": KEEPS, "dense": SLOWS}
ARMS = {"pretrained": "Pretrained", "vanilla": "VanillaDPO", "dense": "DenseDPO",
        "dense:pos=1": "DenseDPO (DPO-Positive lambda 1)"}


def test_points_are_the_paired_bootstrap_differences_against_the_base():
  points = tradeoff.tradeoff_points(ARMS, BY_ARM, ["1", "2"])
  assert [(p["arm"], p["seed"]) for p in points] == [
      (a, s) for a in ("vanilla", "dense", "dense:pos=1") for s in ("1", "2")]
  p = points[2]  # dense, seed 1: fast share 0.35 - 0.5, quality 0.855 - 0.80 on average.
  assert p["x"] == bootstrap_diff([0.3, 0.4] * (P // 2), [0.5] * P)
  assert p["x"][0] == pytest.approx(-0.15) and p["y"][0] == pytest.approx(0.055)
  with pytest.raises(ValueError, match="needs the 'pretrained' arm"):
    tradeoff.tradeoff_points(ARMS, {"dense": SLOWS}, ["1"])


def test_figure_marks_the_origin_and_draws_each_point_where_its_values_are(tmp_path):
  points = tradeoff.tradeoff_points(ARMS, BY_ARM, ["1", "2"])
  path = str(tmp_path / "t.png")
  ax = tradeoff.save_figure(path, points)
  img = np.asarray(Image.open(path).convert("RGB"))
  assert img.shape == (ax.size[1], ax.size[0], 3)
  ox, oy = ax(0.0, 0.0)
  assert tuple(img[round(oy), round(ox)]) == (0, 0, 0)  # The base model's cross.
  for i, p in enumerate(points[::2]):  # The first seed's filled discs, in the arms' colours.
    px, py = ax(p["x"][0], p["y"][0])
    assert tuple(img[round(py), round(px)]) == tradeoff.PALETTE[i]
    assert tradeoff.arm_style(i) == (tradeoff.PALETTE[i], "disc")
  lo, hi = ax(ax.xlim[0], ax.ylim[0]), ax(ax.xlim[1], ax.ylim[1])
  assert lo == (ax.box[0], ax.box[3]) and hi == (ax.box[2], ax.box[1])
  with pytest.raises(ValueError, match="no trained arm"):
    tradeoff.save_figure(path, [])


def test_nice_ticks_are_round_multiples():
  # Span 0.18: 0.025 would give 8 intervals, so the step is 0.05.
  assert tradeoff.nice_ticks(-0.16, 0.02) == pytest.approx([-0.15, -0.1, -0.05, 0.0])
  assert tradeoff.nice_ticks(0.0, 0.05) == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04, 0.05])


def test_only_a_variant_that_keeps_motion_and_quality_meets_the_bar():
  rows = {arm: ok for arm, _, ok in stats.adoption_results(BY_ARM, ["1", "2"], ["dense", "dense:pos=1"])}
  assert rows == {"dense": False, "dense:pos=1": True}
  text = stats.adoption_table(ARMS, BY_ARM, ["1", "2"], ["dense", "dense:pos=1"])
  [keeps] = [line for line in text.splitlines() if line.startswith("| DenseDPO (DPO-Positive lambda 1) | 1 |")]
  assert keeps.endswith("| yes |") and keeps.count("holds") == 4
  [slows] = [line for line in text.splitlines() if line.startswith("| DenseDPO | 1 |")]
  assert slows.endswith("| no |") and slows.count("fails") == 2  # fast share and mean speed
  assert stats.adoption_results({"dense": SLOWS, "pretrained": BASE}, ["1"], ["dense"]) == []
  verdicts = stats.adoption_verdicts(ARMS, BY_ARM, ["1", "2"], ["dense", "dense:pos=1"]).splitlines()
  assert verdicts[0].startswith("1. **DenseDPO: does not meet the bar (fast_share vs. pretrained, "
                                "mean_speed vs. pretrained).**")
  assert verdicts[1].startswith("2. **DenseDPO (DPO-Positive lambda 1): meets the bar.**")
  assert "visual_quality vs. pretrained +0.035 / +0.035" in verdicts[1]  # 0.835 - 0.80


def test_more_arms_than_colours_get_a_shape_each():
  """Arm 10 has arm 0's colour: it is drawn as a filled square, whose corner a disc of the same
  radius leaves white."""
  styles = [tradeoff.arm_style(i) for i in range(2 * len(tradeoff.PALETTE) + 1)]
  assert len(set(styles)) == len(styles)
  assert styles[len(tradeoff.PALETTE)] == (tradeoff.PALETTE[0], "square")
  img = Image.new("RGB", (40, 40), "white")
  d = ImageDraw.Draw(img)
  tradeoff.draw_marker(d, "square", 10, 10, 5, (0, 114, 178), filled=True)
  tradeoff.draw_marker(d, "disc", 30, 30, 5, (0, 114, 178), filled=True)
  px = np.asarray(img)
  assert tuple(px[6, 6]) == (0, 114, 178) and tuple(px[26, 26]) == (255, 255, 255)
