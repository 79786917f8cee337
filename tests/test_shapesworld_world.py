"""ShapesWorld world and text encoder: determinism, ranges, geometry, the prompt split."""
import math

import numpy as np
import pytest

from densedpo_jax.shapesworld import text_encoder
from densedpo_jax.shapesworld import world


def test_generate_is_deterministic_and_in_range():
  v1, s1 = world.generate(123)
  v2, s2 = world.generate(123)
  v3, _ = world.generate(124)
  assert v1.shape == (16, 16, 16, 3) and v1.dtype == np.float32
  np.testing.assert_array_equal(v1, v2)
  assert s1 == s2
  assert not np.array_equal(v1, v3)
  assert v1.min() == -1.0 and v1.max() <= 1.0
  # Exactly the prompt's colour lights up: other channels stay black.
  on = np.asarray(world.COLOURS[s1.colour]) > 0
  assert (v1[..., ~on] == -1.0).all() and (v1[..., on] > -1.0).any()


def test_config_sizes_are_respected():
  cfg = world.WorldConfig(num_frames=9, height=20, width=24, radius=2.5)
  v, _ = world.generate(0, cfg)
  assert v.shape == (9, 20, 24, 3)
  with pytest.raises(ValueError, match="radius"):
    world.WorldConfig(height=8, width=8, radius=3.0)


def test_prompt_names_colour_shape_direction_not_speed():
  scene = world.Scene("red", "circle", "right", speed=1.2, start=(8.0, 8.0))
  assert scene.prompt == "a red circle moves to the right"
  assert world.prompt_for("blue", "triangle", "up-left") == "a blue triangle moves up and to the left"
  speeds = {round(world.sample_scene(s).speed, 6) for s in range(50)}
  lo, hi = world.WorldConfig().speed_range
  assert len(speeds) == 50 and lo <= min(speeds) and max(speeds) <= hi
  assert all(not any(ch.isdigit() for ch in p) for p in world.prompts("all"))


def test_heldout_split_is_fixed_and_every_value_is_trained():
  train, held = world.combos("train"), world.combos("heldout")
  assert set(train).isdisjoint(held) and len(train) + len(held) == len(world.all_combos())
  assert 0.08 < len(held) / len(world.all_combos()) < 0.2
  for i, values in enumerate((world.COLOURS, world.SHAPES, world.DIRECTIONS)):
    assert {c[i] for c in train} == set(values)
  for seed in range(40):
    s = world.sample_scene(seed, split="heldout")
    assert world.is_heldout(s.colour, s.shape, s.direction)
    s = world.sample_scene(seed, split="train")
    assert not world.is_heldout(s.colour, s.shape, s.direction)


def test_shapes_have_equal_area_and_stay_in_frame_while_bouncing():
  for shape in world.SHAPES:
    area = world.shape_mask(shape, (10.0, 10.0), 3.0, 20, 20, supersample=8).sum()
    assert abs(area - math.pi * 9) / (math.pi * 9) < 0.05, shape
  cfg = world.WorldConfig(num_frames=40)
  for shape in world.SHAPES:
    scene = world.Scene("green", shape, "down-right", speed=1.5, start=(8.0, 8.0))
    pos, vel = world.trajectory(scene, cfg)
    video = world.render(scene, cfg)
    margin = world.extent(cfg.radius, shape)
    assert (pos >= margin - 1e-5).all() and (pos <= 16 - margin + 1e-5).all()
    assert (vel[:, 0] > 0).any() and (vel[:, 0] < 0).any()  # it bounced
    # The whole shape is visible in every frame: constant coverage.
    cover = (video[..., 1] + 1.0).sum(axis=(1, 2)) / 2.0
    np.testing.assert_allclose(cover, cover[0], rtol=0.08)
    step = np.linalg.norm(np.diff(pos, axis=0), axis=-1)
    assert step.max() <= 1.5 + 1e-4


def test_first_motion_follows_the_prompt_direction():
  cfg = world.WorldConfig()
  for d, (dy, dx) in world.DIRECTIONS.items():
    scene = world.Scene("red", "square", d, speed=0.5, start=(8.0, 8.0))
    pos, _ = world.trajectory(scene, cfg)
    np.testing.assert_allclose(pos[1] - pos[0], 0.5 * np.array([dy, dx]), atol=1e-5)


def test_text_encoder_is_deterministic_padded_and_order_sensitive():
  enc = text_encoder.HashTextEncoder(max_len=16, dim=64)
  emb, mask = enc("a red circle moves to the right")
  assert emb.shape == (16, 64) and emb.dtype == np.float32 and mask.dtype == bool
  assert mask.sum() == 8 and mask[:8].all()  # 7 words + EOS
  assert (emb[~mask] == 0).all() and np.abs(emb[mask]).sum(-1).min() > 0
  emb2, _ = text_encoder.HashTextEncoder(max_len=16, dim=64)("A red circle moves to the right.")
  np.testing.assert_array_equal(emb, emb2)
  other, _ = enc("a blue circle moves to the right")
  assert not np.allclose(emb[1], other[1]) and np.allclose(emb[2:8], other[2:8])
  swapped, _ = enc("a circle red moves to the right")
  assert not np.allclose(emb[1:3], swapped[1:3])
  long_emb, long_mask = enc(" ".join(["word"] * 40))
  assert long_mask.all() and long_emb.shape == (16, 64)
  null_emb, null_mask = enc("")
  assert null_mask.sum() == 1
  embs, masks = text_encoder.HashTextEncoder(max_len=8, dim=32).encode_batch(["a", "b c"])
  assert embs.shape == (2, 8, 32) and masks.sum(-1).tolist() == [2, 3]
