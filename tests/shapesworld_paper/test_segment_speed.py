"""The per-segment speed diagnostic: ground truth from a pair's metadata, and the grouping of
segments by who won them, on hand-made clips whose speeds are known."""
import types

import numpy as np
import pytest

from densedpo_jax.shapesworld import world
from projects.shapesworld_paper import segment_speed


def test_ground_truth_renders_the_scene_of_the_pairs_metadata():
  video, scene = world.generate(7)
  meta = {"gt_metadata": {"seed": scene.seed, "colour": scene.colour, "shape": scene.shape,
                          "direction": scene.direction, "speed": scene.speed,
                          "start": list(scene.start)}}
  pair = types.SimpleNamespace(id="p", gt_latent=None, metadata=meta, num_frames=16,
                               latent_a=np.zeros_like(video))
  np.testing.assert_array_equal(segment_speed.ground_truth(pair), video)
  stored = types.SimpleNamespace(gt_latent=video + 0.5, metadata={})
  np.testing.assert_array_equal(segment_speed.ground_truth(stored), video + 0.5)
  with pytest.raises(ValueError, match=r"pair 'q': no gt_latent .* lacks \['colour'"):
    segment_speed.ground_truth(types.SimpleNamespace(id="q", gt_latent=None, metadata={}))


def _clip(speed):
  return world.render(world.Scene("red", "circle", "down", speed, (3.5, 8.0)))


def test_segments_are_grouped_by_whether_the_slower_member_won():
  # a moves at 0.4, b at 0.6 px/frame (no bounce in 16 frames: 3.5 + 15 * 0.6 < 16 - 3); the
  # trained model makes them 0.3 and 0.5: every segment slows by 0.1. a wins segment 0 (the slower member won), b wins
  # segment 1 (the faster won), segments 2 and 3 tie.
  pair = types.SimpleNamespace(prompt="a red circle moves down", frames_per_segment=4,
                               num_segments=4, segment_labels=np.array([1, -1, 0, 0]))
  base = (_clip(0.4)[None], _clip(0.6)[None])
  trained = (_clip(0.3)[None], _clip(0.5)[None])
  out = segment_speed.segment_changes([pair], base, trained)
  assert {g: len(v) for g, v in out.items()} == {"slower member won": 1, "faster member won": 1,
                                                 "tie": 2}
  for values in out.values():
    np.testing.assert_allclose(values, -0.1, atol=0.02)  # The judge reads speed to about 0.01.
  summary = segment_speed.summarise(out)
  assert summary["tie"]["segments"] == 2 and summary["tie"]["mean"] == pytest.approx(np.mean(out["tie"]))
