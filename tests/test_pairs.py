"""Pair generation: Algo. 1 and 2 against closed forms, determinism, resumable parts."""
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import dpo_common
from configs import pairs as pairs_config
from densedpo_jax.tasks import pairs
from densedpo_jax.objectives import sampling
from densedpo_jax.data import arrayrecord_io, tfds_builder
from densedpo_jax.shapesworld import judge
from densedpo_jax.model import VideoDiT, get_dit_config
from tests.helpers import D, L, T, H, W, C, write_videos


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("pairs")
  videos = write_videos(str(root / "videos"), n=6)
  model = VideoDiT(get_dit_config("tiny", width=32, depth=2, num_heads=2, text_dim=D))
  # A fresh model predicts v = 0 exactly, so each sampler has a closed form.
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, T, H, W, C)), jnp.zeros((1,)),
                               jnp.zeros((1, L, D)), jnp.ones((1, L), bool))["params"])
  return root, arrayrecord_io.ShardedSource(videos, "videos"), model, params


def _config(root, mode, **kw):
  c = pairs_config.get_config(mode)
  c.pairs.update(dict(dict(num_pairs=5, pairs_per_part=2, batch_size=2, num_steps=4,
                           out_dir=str(root / f"out_{mode}")), **kw))
  return c


def _noise(seed):
  return np.asarray(jax.random.normal(jax.random.key(seed), (T, H, W, C)))


def test_guided_pairs_follow_algo_2_with_a_zero_velocity_model(setup):
  root, source, model, params = setup
  side = pairs.generate_pairs(_config(root, "guided", eta_range=(0.3, 0.6)), source, params, model)
  assert side["num_records"] == 5 and side["signature"]["kind"] == "pair"
  recs = list(arrayrecord_io.iter_records(str(root / "out_guided"), "pairs"))
  gts = [arrayrecord_io.decode_raw(source[i]) for i in range(5)]
  assert [r.gt_video_id for r in recs] == [g.id for g in gts]
  etas = [r.eta for r in recs]
  assert all(0.3 <= e <= 0.6 for e in etas) and len(set(etas)) == 5
  for r, g in zip(recs, gts):
    # v = 0: the run leaves x_eta = (1 - eta) x_gt + eta eps unchanged.
    for latent, seed in ((r.latent_a, r.seed_a), (r.latent_b, r.seed_b)):
      want = (1 - r.eta) * g.latent + r.eta * _noise(seed)
      np.testing.assert_allclose(latent, want, rtol=1e-5, atol=1e-5)
    assert r.seed_a != r.seed_b and r.source == "guided" and r.frames_per_segment == 4


def test_guided_pairs_store_their_ground_truth_when_asked(setup):
  """pairs.store_gt: each guided pair carries its ground-truth latent, which the pair pipeline
  hands to the DPO step (dpo.gt_lambda); a wrong shape is named."""
  import dataclasses
  from densedpo_jax.data import pipeline, schema
  root, source, model, params = setup
  c = _config(root, "guided", eta_range=(0.3, 0.6), store_gt=True, out_dir=str(root / "with_gt"))
  side = pairs.generate_pairs(c, source, params, model)
  assert side["signature"]["gt_latent"] is True
  recs = list(arrayrecord_io.iter_records(str(root / "with_gt"), "pairs"))
  videos = {v.id: v for v in (arrayrecord_io.decode_raw(source[i]) for i in range(len(source)))}
  for r in recs:
    np.testing.assert_array_equal(r.gt_latent, np.asarray(videos[r.gt_video_id].latent, np.float32))
  example = pipeline.pair_example(recs[0])
  np.testing.assert_array_equal(example["gt_latent"], recs[0].gt_latent)
  with pytest.raises(schema.RecordError, match=r"gt_latent.*shape \(1, 2, 3, 3\) != latent_a"):
    schema.validate(dataclasses.replace(recs[0], gt_latent=np.zeros((1, 2, 3, 3), np.float32)))


def test_vanilla_pairs_start_from_pure_noise(setup):
  root, source, model, params = setup
  pairs.generate_pairs(_config(root, "vanilla"), source, params, model)
  recs = list(arrayrecord_io.iter_records(str(root / "out_vanilla"), "pairs"))
  assert len(recs) == 5 and all(math.isnan(r.eta) and r.gt_video_id is None for r in recs)
  for r in recs:
    np.testing.assert_allclose(r.latent_a, _noise(r.seed_a), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.latent_b, _noise(r.seed_b), rtol=1e-5, atol=1e-5)


def test_more_pairs_than_videos_are_capped_with_one_warning(setup, caplog):
  root, source, model, params = setup
  with caplog.at_level(logging.WARNING):
    side = pairs.generate_pairs(_config(root, "guided", num_pairs=9, out_dir=str(root / "capped")),
                                source, params, model)
  assert side["num_records"] == 6
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == ["config.pairs.num_pairs=9, but the source has 6 videos (one pair a video): "
                      "making 6 pairs"]


def test_interrupted_generation_resumes_at_the_missing_part(setup):
  # Pair generation writes through data/parts.py (tests/test_parts.py tests it alone).
  root, source, model, params = setup
  config = _config(root, "guided", eta_range=(0.5, 0.5))
  config.pairs.out_dir = str(root / "resume")
  pairs.generate_pairs(config, source, params, model)
  first = {r.id: r for r in arrayrecord_io.iter_records(config.pairs.out_dir, "pairs")}
  parts = os.path.join(config.pairs.out_dir, "parts")
  # A crash before part 2 was committed and before the final sidecar.
  os.remove(os.path.join(config.pairs.out_dir, "pairs.json"))
  os.remove(os.path.join(parts, "part-00001-of-00003.json"))
  kept = os.path.getmtime(os.path.join(parts, "part-00000-of-00003-00000-of-00001.array_record"))
  pairs.generate_pairs(config, source, params, model)
  assert os.path.getmtime(os.path.join(parts, "part-00000-of-00003-00000-of-00001.array_record")) == kept
  again = {r.id: r for r in arrayrecord_io.iter_records(config.pairs.out_dir, "pairs")}
  assert sorted(again) == sorted(first)
  for k in first:  # Deterministic: the regenerated part is identical.
    np.testing.assert_array_equal(again[k].latent_a, first[k].latent_a)


def test_bad_eta_range_is_an_error(setup):
  root, source, model, params = setup
  with pytest.raises(ValueError, match="eta_range"):
    config = _config(root, "guided", eta_range=(0.0, 0.5))
    config.pairs.out_dir = str(root / "bad")
    pairs.generate_pairs(config, source, params, model)
  assert not os.path.exists(root / "bad")  # Failed before writing anything.


def test_guided_pairs_share_motion_while_vanilla_pairs_vary(tmp_path):
  """With the shipped base model: the two members of a guided pair move alike (same ground
  truth structure); the members of a vanilla pair are independent draws."""
  cfg_world = tfds_builder.ShapesWorldConfig(name="test")
  arrayrecord_io.write_records([tfds_builder.shapesworld_video(i, "train", cfg_world) for i in range(8)],
                               str(tmp_path / "videos"), "videos", num_shards=1)
  source = arrayrecord_io.ShardedSource(str(tmp_path / "videos"), "videos")
  config = pairs_config.get_config("guided")
  model_cfg = get_dit_config("tiny")
  model = VideoDiT(model_cfg)
  first = arrayrecord_io.decode_raw(source[0])
  params = sampling.load_exported_params(dpo_common.SHIPPED_BASE, model_cfg)
  gaps = {}
  for mode in ("guided", "vanilla"):
    c = _config(tmp_path, mode, eta_range=(0.5, 0.5)) if mode == "guided" else _config(tmp_path, mode)
    c.pairs.update(num_pairs=8, pairs_per_part=8, batch_size=8, num_steps=16)
    pairs.generate_pairs(c, source, params, model)
    recs = arrayrecord_io.iter_records(c.pairs.out_dir, "pairs")
    gaps[mode] = np.mean([abs(judge.judge_video(r.latent_a, r.prompt).mean_speed -
                              judge.judge_video(r.latent_b, r.prompt).mean_speed) for r in recs])
  assert gaps["guided"] < 0.5 * gaps["vanilla"], gaps
