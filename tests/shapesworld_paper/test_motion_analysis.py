"""Motion statistics of labeled guided pairs, on hand-built pairs whose winners are known."""
import dataclasses

import numpy as np
import pytest

from projects.shapesworld_paper import motion_analysis
from densedpo_jax.data import arrayrecord_io
from densedpo_jax.labeling import oracle
from tests.helpers import (corrupt_segment as _corrupt_segment, world_pair as _pair,
                           world_video as _video)


def test_winner_speed_statistics_of_segment_labels(tmp_path):
  slow, fast = _video(0.3), _video(1.3)
  # p0: the slow member wins segment 0, the fast one segment 3. p1: the slow one wins segment 1.
  a0, b0 = _corrupt_segment(slow, 3), _corrupt_segment(fast, 0)
  a1, b1 = slow, _corrupt_segment(fast, 1)
  recs = [dataclasses.replace(_pair("p0", a0, b0), eta=0.45, source="guided", gt_video_id="v0"),
          dataclasses.replace(_pair("p1", a1, b1), eta=0.65, source="guided", gt_video_id="v1")]
  with arrayrecord_io.ShardedWriter(str(tmp_path), "pairs", 1) as w:
    for r in recs:
      w.write(r)
  oracle.label_dataset(str(tmp_path), "pairs", str(tmp_path), "labeled", oracle.SegmentOracle())
  labeled = {r.id: r.segment_labels.tolist() for r in arrayrecord_io.iter_records(str(tmp_path), "labeled")}
  assert labeled == {"p0": [1, 0, 0, -1], "p1": [0, 1, 0, 0]}

  out = motion_analysis.analyse_labels(str(tmp_path), "labeled", min_nontie_frac=0.3)
  # Reference: the winner-minus-loser speed of each non-tie segment, from the displacement of
  # the shape's centre (the world's own speeds: 0.3 and 1.3 px/frame, ±1 px of rendering).
  d = [0.3 - 1.3, 1.3 - 0.3, 0.3 - 1.3]
  assert out["segments"]["count"] == 3
  assert out["segments"]["winner_slower_share"] == pytest.approx(2 / 3)
  assert out["segments"]["mean_winner_minus_loser_speed"] == pytest.approx(np.mean(d), abs=0.1)
  # p1 has 1 of 4 segments non-tie (< 0.3): the loss drops it; p0 (2 of 4) stays.
  assert out["kept_segments"]["count"] == 2
  assert out["kept_segments"]["winner_slower_share"] == pytest.approx(0.5)
  bins = {tuple(b["eta"]): b for b in out["by_eta"]}
  assert set(bins) == {(0.4, 0.5), (0.6, 0.7)}
  assert bins[(0.4, 0.5)]["mean_abs_speed_diff"] == pytest.approx(1.0, abs=0.15)
  assert bins[(0.4, 0.5)]["mean_member_speed"] == pytest.approx(0.8, abs=0.1)  # (0.3 + 1.3) / 2
