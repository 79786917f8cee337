"""ShapesWorld oracle labelers: hand-built pairs with known artifacts, label noise, majority vote,
and labeling a small dataset end to end. Pure NumPy, a few seconds."""
import dataclasses

import numpy as np
import pytest

from densedpo_jax.data import arrayrecord_io
from densedpo_jax.labeling import oracle
from tests.helpers import (PROMPT, corrupt_segment as _corrupt_segment, world_pair as _pair,
                           world_video as _video)

def test_majority_vote_hand_cases():
  assert oracle.majority_vote([1, 1, -1, 0]) == 1
  assert oracle.majority_vote([1, -1, 0, 0]) == 0
  assert oracle.majority_vote([-1, -1, 0, 1]) == -1
  assert oracle.majority_vote([0, 0, 0, 0]) == 0
  out = oracle.majority_vote(np.asarray([[0, 0, 0, 1], [-1, 0, 0, 0], [1, -1, 1, -1]], np.int8))
  assert out.dtype == np.int8 and out.tolist() == [1, -1, 0]
  with pytest.raises(ValueError, match="segment_labels values"):
    oracle.majority_vote([2, 0])


@pytest.mark.parametrize("kind", ["ghosting", "deformation", "vanishing"])
def test_segment_oracle_points_to_the_clean_segment(kind):
  v = _video(0.6)
  bad = _corrupt_segment(v, 2, kind)
  lab = oracle.SegmentOracle(tie_margin=0.05)
  seg, glob = lab.label(_pair("p", v, bad), v, bad)
  assert seg.dtype == np.int8 and seg.tolist() == [0, 0, 1, 0] and glob == 1
  seg, glob = lab.label(_pair("p", bad, v), bad, v)
  assert seg.tolist() == [0, 0, -1, 0] and glob == -1
  seg, glob = lab.label(_pair("p", v, v), v, v)
  assert seg.tolist() == [0, 0, 0, 0] and glob == 0


def test_segment_oracle_mixed_winners_and_global_oracle_uniform():
  v = _video(0.6)
  a, b = _corrupt_segment(v, 0), _corrupt_segment(v, 3)
  seg, glob = oracle.SegmentOracle().label(_pair("m", a, b), a, b)
  assert seg.tolist() == [-1, 0, 0, 1] and glob == 0
  bad = _corrupt_segment(v, 1)
  seg, glob = oracle.GlobalOracle().label(_pair("g", v, bad), v, bad)
  assert seg.tolist() == [1, 1, 1, 1] and glob == 1


def test_global_oracle_prefers_slow_clean_over_fast_with_artifact():
  slow, fast = _video(0.3), _corrupt_segment(_video(1.3), 1, "blur", 0.5)
  seg, glob = oracle.GlobalOracle().label(_pair("s", fast, slow), fast, slow)
  assert glob == -1 and seg.tolist() == [-1, -1, -1, -1]
  # The dense labeler localises the same preference to the corrupted segment.
  seg, glob = oracle.SegmentOracle().label(_pair("s", fast, slow), fast, slow)
  assert seg.tolist() == [0, -1, 0, 0] and glob == -1


def test_flip_prob_one_flips_every_non_tie_label():
  v = _video(0.6)
  a, b = _corrupt_segment(v, 0), _corrupt_segment(v, 3)
  seg, glob = oracle.SegmentOracle(flip_prob=1.0).label(_pair("m", a, b), a, b)
  assert seg.tolist() == [1, 0, 0, -1] and glob == 0
  bad = _corrupt_segment(v, 1)
  seg, glob = oracle.GlobalOracle(flip_prob=1.0).label(_pair("g", v, bad), v, bad)
  assert glob == -1 and seg.tolist() == [-1] * 4
  seg, glob = oracle.SegmentOracle(flip_prob=1.0).label(_pair("g", v, bad), v, bad)
  assert seg.tolist() == [0, -1, 0, 0] and glob == -1


def test_flip_labels_share_and_determinism():
  labels = np.asarray([1, -1, 0] * 400, np.int8)
  f1 = oracle.flip_labels(labels, 0.3, seed=5, key="pair-1")
  np.testing.assert_array_equal(f1, oracle.flip_labels(labels, 0.3, seed=5, key="pair-1"))
  assert not np.array_equal(f1, oracle.flip_labels(labels, 0.3, seed=5, key="pair-2"))
  assert not np.array_equal(f1, oracle.flip_labels(labels, 0.3, seed=6, key="pair-1"))
  assert (f1[labels == 0] == 0).all()
  flipped = np.mean(f1[labels != 0] != labels[labels != 0])
  assert 0.25 < flipped < 0.35
  np.testing.assert_array_equal(oracle.flip_labels(labels, 0.0, 5, "x"), labels)
  with pytest.raises(ValueError, match="flip_prob"):
    oracle.SegmentOracle(flip_prob=1.5)
  with pytest.raises(ValueError, match="tie_margin"):
    oracle.GlobalOracle(tie_margin=-0.1)


def _dataset(tmp_path):
  """4 pairs: 3 of a slow clean clip vs a fast corrupted one (order alternating), 1 mixed."""
  recs = []
  for i, (slow_speed, fast_speed) in enumerate(((0.3, 1.2), (0.4, 1.0), (0.25, 1.4))):
    slow, fast = _video(slow_speed, start=(7.0 + i, 6.0)), _corrupt_segment(_video(fast_speed), i, "vanishing", 0.9)
    a, b = (slow, fast) if i % 2 == 0 else (fast, slow)
    recs.append(_pair(f"p{i}", a, b))
  v = _video(0.6, direction="down-right")
  recs.append(_pair("p3", _corrupt_segment(v, 0, "vanishing", 1.0), _corrupt_segment(v, 3, "vanishing", 1.0),
                    prompt="a red circle moves down and to the right"))
  arrayrecord_io.write_records(recs, str(tmp_path), "pairs", num_shards=1, metadata={"stage": "pairs"})
  return recs


def test_label_dataset_round_trip_and_stats(tmp_path):
  recs = _dataset(tmp_path)
  lab = oracle.SegmentOracle(tie_margin=0.05, seed=3)
  stats = oracle.label_dataset(str(tmp_path), "pairs", str(tmp_path), "labeled", lab, num_shards=2)
  back = {r.id: r for r in arrayrecord_io.iter_records(str(tmp_path), "labeled")}
  assert sorted(back) == ["p0", "p1", "p2", "p3"]
  assert arrayrecord_io.read_sidecar(str(tmp_path), "labeled")["num_shards"] == 2
  want = {"p0": ([1, 0, 0, 0], 1), "p1": ([0, 1, 0, 0], 1), "p2": ([0, 0, 1, 0], 1), "p3": ([-1, 0, 0, 1], 0)}
  want["p1"] = ([0, -1, 0, 0], -1)  # fast member is a
  for r in recs:
    out = back[r.id]
    assert out.segment_labels.dtype == np.int8
    assert (out.segment_labels.tolist(), out.global_label) == want[r.id]
    assert out.labeler == "shapesworld_segment_oracle" and out.labeler_params == lab.params
    np.testing.assert_array_equal(out.latent_a, r.latent_a)
    assert out.prompt == r.prompt
  assert stats["num_pairs"] == 4 and stats["num_nontie_global"] == 3
  assert stats["motion_bias"] == 1.0  # the slow member always wins
  assert stats["mixed_winner_share"] == 0.25
  assert stats["global_label_share"] == {"-1": 0.25, "0": 0.25, "1": 0.5}
  assert stats["segment_label_share"]["0"] == pytest.approx(11 / 16)
  assert stats["preferred_mean_speed"] < stats["rejected_mean_speed"]


def test_label_dataset_global_oracle_and_custom_labeler(tmp_path):
  _dataset(tmp_path)
  stats = oracle.label_dataset(str(tmp_path), "pairs", str(tmp_path), "g", oracle.GlobalOracle())
  back = list(arrayrecord_io.iter_records(str(tmp_path), "g"))
  assert [r.global_label for r in back] == [1, -1, 1, 0]
  assert all(r.segment_labels.tolist() == [r.global_label] * 4 for r in back)
  assert stats["motion_bias"] == 1.0 and stats["mixed_winner_share"] == 0.0

  class AlwaysA(oracle.Labeler):
    name = "always_a"

    def label(self, pair, video_a, video_b):
      return np.ones(pair.num_segments, np.int8), 1

  stats = oracle.label_dataset(str(tmp_path), "pairs", str(tmp_path), "a", AlwaysA())
  # a is the slow clip in p0 and p2, the fast one in p1; in p3 a's first segment is gone, and the
  # judge holds an absent start at the first visible centroid (static), so a reads slower there.
  assert stats["motion_bias"] == pytest.approx(3 / 4)
  assert [r.labeler for r in arrayrecord_io.iter_records(str(tmp_path), "a")] == ["always_a"] * 4
  with pytest.raises(ValueError, match="labeler must be a Labeler"):
    oracle.label_dataset(str(tmp_path), "pairs", str(tmp_path), "x", object())


def test_label_dataset_budget_labels_the_first_pairs(tmp_path):
  recs = _dataset(tmp_path)
  lab = oracle.SegmentOracle(tie_margin=0.05)
  stats = oracle.label_dataset(str(tmp_path), "pairs", str(tmp_path), "two", lab, max_pairs=2)
  back = list(arrayrecord_io.iter_records(str(tmp_path), "two"))
  assert [r.id for r in back] == [r.id for r in recs[:2]] and stats["num_pairs"] == 2
  # Hand-derived labels of p0 and p1 (see the round-trip test): a slow clean clip wins.
  assert [(r.segment_labels.tolist(), r.global_label) for r in back] == [([1, 0, 0, 0], 1),
                                                                        ([0, -1, 0, 0], -1)]
  for bad in (0, 5):
    with pytest.raises(ValueError, match=f"max_pairs={bad}: .* has 4 pairs"):
      oracle.label_dataset(str(tmp_path), "pairs", str(tmp_path), "x", lab, max_pairs=bad)


def test_identity_decoder_checks_shapes():
  v = _video(0.5)
  a, b = oracle.identity_decoder(_pair("d", v, v))
  assert a.shape == (16, 16, 16, 3) and a.dtype == np.float32
  with pytest.raises(ValueError, match="video_b must be"):
    oracle.SegmentOracle().label(_pair("d", v, v), v, v[:8])
  with pytest.raises(ValueError, match="temporal_factor 1"):
    oracle.identity_decoder(dataclasses.replace(_pair("d", v[:13], v[:13]), num_frames=49, temporal_factor=4))


def test_keep_wins_keeps_only_the_segments_won_by_the_faster_or_slower_member():
  slow, fast = _video(0.3), _video(1.3)
  a, b = _corrupt_segment(slow, 3), _corrupt_segment(fast, 0)  # a (slow) wins 0, b (fast) wins 3
  pair = _pair("w", a, b)
  assert oracle.SegmentOracle().label(pair, a, b)[0].tolist() == [1, 0, 0, -1]
  seg, glob = oracle.SegmentOracle(keep_wins="faster").label(pair, a, b)
  assert seg.tolist() == [0, 0, 0, -1] and glob == -1
  seg, glob = oracle.SegmentOracle(keep_wins="slower").label(pair, a, b)
  assert seg.tolist() == [1, 0, 0, 0] and glob == 1
  assert oracle.SegmentOracle(keep_wins="slower").params["keep_wins"] == "slower"
  assert "keep_wins" not in oracle.SegmentOracle().params  # older labels keep their params
  with pytest.raises(ValueError, match="keep_wins='fast'"):
    oracle.SegmentOracle(keep_wins="fast")


def test_segment_speeds_average_the_displacements_that_start_in_each_segment():
  from densedpo_jax.shapesworld import judge
  score = judge.judge_video(_video(0.8), PROMPT, 4)
  want = [np.mean(score.speed[0:4]), np.mean(score.speed[4:8]), np.mean(score.speed[8:12]),
          np.mean(score.speed[12:15])]
  np.testing.assert_allclose(judge.segment_speeds(score, 4, 4), want, rtol=1e-12)
  # Floor segments: the leftover displacements join the last one.
  np.testing.assert_allclose(judge.segment_speeds(score, 6, 2),
                             [np.mean(score.speed[0:6]), np.mean(score.speed[6:15])], rtol=1e-12)
