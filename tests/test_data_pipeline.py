"""Grain pipelines: determinism, per-process sharding, filters, labels, checkpoint/restore."""
import dataclasses
import itertools
import json

import ml_dtypes
import numpy as np
import pytest

from densedpo_jax.data import segments
from densedpo_jax.data import arrayrecord_io
from densedpo_jax.data import pipeline
from densedpo_jax.data import synthetic

SHAPE = (5, 2, 2, 3)  # T' = 5 latent frames of a 17-frame clip, causal r = 4
N = 24


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("pairs"))
  rng = np.random.default_rng(0)
  recs = [synthetic.random_pair(rng, f"p{i:03d}", latent_shape=SHAPE, temporal_factor=4, frames_per_segment=4,
                                latent_dtype="bfloat16", labeled=i % 6 != 5) for i in range(N)]
  arrayrecord_io.write_records(recs, d, "pairs", num_shards=3)
  return arrayrecord_io.ShardedSource(d, "pairs"), {r.id: r for r in recs}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("videos"))
  rng = np.random.default_rng(1)
  arrayrecord_io.write_records([synthetic.random_video(rng, f"v{i}", latent_shape=(4, 3, 3, 2)) for i in range(10)],
                               d, "videos", num_shards=2)
  return arrayrecord_io.ShardedSource(d, "videos")


def _ids(ds, n=None):
  out = []
  for batch in itertools.islice(ds, n):
    out.extend(batch["id"].tolist())
  return out


def _assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_pair_batch_layout(pairs):
  src, _ = pairs
  b = next(iter(pipeline.pair_dataset(src, batch_size=4, seed=0, filter_pairs=False)))
  # Stored dtypes travel as they are (bf16 latents here): half the host bytes of float32.
  assert b["latent_a"].shape == b["latent_b"].shape == (4, *SHAPE)
  assert b["latent_a"].dtype == ml_dtypes.bfloat16 and b["latent_a"].nbytes == 4 * np.prod(SHAPE) * 2
  assert b["text_emb"].shape == (4, 16, 64) and b["text_emb"].dtype == np.float32
  assert b["text_mask"].shape == (4, 16) and b["text_mask"].dtype == bool
  assert b["labels"].shape == (4, 5) and b["labels"].dtype == np.int8
  assert b["segment_ids"].shape == (4, 5) and b["segment_ids"].dtype == np.int32
  assert b["segment_labels"].shape == (4, 5) and b["global_label"].shape == (4,) and b["eta"].shape == (4,)
  assert b["id"].shape == (4,) and b["id"][0].startswith("p")


def test_video_batch_layout(videos, pairs):
  b = next(iter(pipeline.video_dataset(videos, batch_size=3, seed=0)))
  assert b["latent"].shape == (3, 4, 3, 3, 2)
  assert b["text_emb"].shape == (3, 16, 64) and b["text_mask"].shape == (3, 16)
  with pytest.raises(ValueError, match="holds pair records"):
    pipeline.video_dataset(pairs[0], batch_size=3, seed=0)


def test_same_seed_same_batches_other_seed_other_order(pairs):
  src, _ = pairs
  make = lambda seed: pipeline.pair_dataset(src, batch_size=4, seed=seed, filter_pairs=False, read_threads=2)
  a = list(itertools.islice(make(7), 8))  # 8 batches = more than one epoch
  b = list(itertools.islice(make(7), 8))
  _assert_batches_equal(a, b)
  ids_a = [i for x in a for i in x["id"]]
  assert sorted(ids_a[:N]) == sorted(f"p{i:03d}" for i in range(N))  # one epoch = every pair once
  assert ids_a[N:] != ids_a[:len(ids_a) - N]  # the next epoch is reshuffled
  assert _ids(make(8), 3) != ids_a[:12]


def test_two_processes_see_disjoint_complete_halves_every_epoch(pairs):
  src, _ = pairs
  per_proc = []
  for p in range(2):
    ds = pipeline.pair_dataset(src, batch_size=1, seed=3, filter_pairs=False, num_epochs=2,
                               process_index=p, process_count=2)
    per_proc.append(_ids(ds))
  assert [len(ids) for ids in per_proc] == [N, N]  # N / 2 a process, two epochs
  for epoch in range(2):
    h0, h1 = (set(ids[epoch * N // 2:(epoch + 1) * N // 2]) for ids in per_proc)
    assert len(h0) == len(h1) == N // 2 and not h0 & h1
    assert h0 | h1 == {f"p{i:03d}" for i in range(N)}
  assert per_proc[0][:N // 2] != per_proc[0][N // 2:]
  with pytest.raises(ValueError, match="process_index"):
    pipeline.pair_dataset(src, batch_size=1, seed=3, process_index=2, process_count=2)


def test_processes_batches_make_up_the_one_process_batch(pairs):
  """Process i reads the i-th slice of every global batch, across epoch ends (N = 24 is no
  multiple of the global batch 9), so a job's global batches do not depend on its processes."""
  src, _ = pairs
  one = _ids(pipeline.pair_dataset(src, batch_size=9, seed=5, filter_pairs=False), 6)
  parts = [_ids(pipeline.pair_dataset(src, batch_size=3, seed=5, filter_pairs=False,
                                      process_index=p, process_count=3), 6) for p in range(3)]
  merged = [i for step in range(6) for p in range(3) for i in parts[p][3 * step:3 * step + 3]]
  assert merged == one


@pytest.mark.parametrize("mode,min_nontie_frac", [("dense", 0.2), ("dense", 0.5), ("global", 0.2)])
def test_filter_keeps_exactly_the_qualifying_pairs(pairs, mode, min_nontie_frac):
  src, recs = pairs
  ds = pipeline.pair_dataset(src, batch_size=1, seed=0, mode=mode, min_nontie_frac=min_nontie_frac,
                             num_epochs=1, drop_remainder=False)
  seen = _ids(ds)
  if mode == "dense":
    want = {i for i, r in recs.items()
            if r.segment_labels is not None and np.mean(r.segment_labels != 0) > min_nontie_frac}
  else:
    want = {i for i, r in recs.items() if r.global_label not in (None, 0)}
  assert 0 < len(want) < N and sorted(seen) == sorted(want)


def test_labels_follow_segments_and_global_labels(pairs):
  src, recs = pairs
  for mode in ("dense", "global"):
    for b in pipeline.pair_dataset(src, batch_size=2, seed=0, mode=mode, num_epochs=1):
      for k, pid in enumerate(b["id"]):
        r = recs[pid]
        if mode == "dense":
          want = segments.latent_frame_labels(r.segment_labels, 17, 4, 4, True)
        else:
          want = np.full(5, r.global_label)
        np.testing.assert_array_equal(b["labels"][k], want)
        assert b["global_label"][k] == r.global_label
        np.testing.assert_array_equal(b["latent_a"][k], r.latent_a.astype(np.float32))
  # Worked example: 17 frames, segments of 4 (S = 5), causal r = 4: latent frame j >= 1
  # covers pixel frames 4j-3 .. 4j, so frames 1..4 straddle segments 0 and 1.
  rec = dataclasses.replace(recs["p000"], segment_labels=np.array([1, 1, -1, -1, -1], np.int8))
  ex = pipeline.pair_example(rec)
  assert ex["labels"].tolist() == [1, 1, 0, -1, -1]
  assert ex["segment_ids"].tolist() == [0, -1, -1, -1, -1]
  assert pipeline.pair_example(rec, "global")["labels"].tolist() == [rec.global_label] * 5


def test_iterator_state_restores_exactly_the_next_batches(pairs):
  src, _ = pairs
  make = lambda: pipeline.pair_dataset(src, batch_size=3, seed=11, mode="dense", read_threads=2,
                                       prefetch_buffer_size=4)
  it = iter(make())
  for _ in range(5):  # crosses an epoch boundary of the filtered stream
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # JSON-able, as grain.checkpoint writes it
  expected = [next(it) for _ in range(4)]
  resumed = iter(make())  # a fresh pipeline, as after a restart
  resumed.set_state(state)
  _assert_batches_equal([next(resumed) for _ in range(4)], expected)
  assert next(iter(make()))["id"].tolist() != expected[0]["id"].tolist()


def test_iterator_round_trips_through_orbax_with_grain_checkpoint(pairs, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  import grain  # pylint: disable=g-import-not-at-top
  src, _ = pairs
  make = lambda: pipeline.pair_dataset(src, batch_size=2, seed=5, mode="global", read_threads=2)
  it = iter(make())
  for _ in range(3):
    next(it)
  mgr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  mgr.save(3, args=ocp.args.Composite(iter=grain.checkpoint.CheckpointSave(it)))
  mgr.wait_until_finished()
  expected = [next(it) for _ in range(3)]
  resumed = iter(make())
  mgr.restore(3, args=ocp.args.Composite(iter=grain.checkpoint.CheckpointRestore(resumed)))
  _assert_batches_equal([next(resumed) for _ in range(3)], expected)
  mgr.close()


def test_a_dataset_with_nothing_to_train_on_is_an_error(tmp_path):
  rng = np.random.default_rng(0)
  recs = [synthetic.random_pair(rng, f"p{i}", latent_shape=(4, 2, 2, 1), frames_per_segment=2)
          for i in range(3)]
  recs = [dataclasses.replace(r, segment_labels=np.zeros_like(r.segment_labels), global_label=0)
          for r in recs]
  arrayrecord_io.write_records(recs, str(tmp_path), "ties", num_shards=1)
  src = arrayrecord_io.ShardedSource(str(tmp_path), "ties")
  for mode in ("dense", "global"):
    with pytest.raises(ValueError, match="none of its 3 pairs"):
      pipeline.pair_dataset(src, batch_size=1, seed=0, mode=mode)
