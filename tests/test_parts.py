"""data/parts.py, the resumable part writer of pair generation and encoding: a rerun writes only
the parts that were not committed, a run with another plan is refused, a missing part is named,
empty parts can be left out, URLs are refused before anything is written, and with several
processes each writes its share."""
import os

import numpy as np
import pytest

from densedpo_jax.data import arrayrecord_io, parts as parts_lib, synthetic

SHAPE = (4, 4, 4, 3)


def _record(i):
  return synthetic.random_video(np.random.default_rng(i), f"v{i}", latent_shape=SHAPE,
                                text_shape=(2, 4))


def _write(parts, written=None):
  for k in parts.todo():
    with parts.writer(k) as writer:
      for i in parts.items(k):
        writer.write(_record(i))
        if written is not None:
          written.append(i)


def test_a_rerun_writes_only_the_parts_not_committed(tmp_path):
  folder = str(tmp_path / "parts")
  parts = parts_lib.Parts(folder, 5, 2, plan={"seed": 0})
  assert parts.num_parts == 3 and [list(parts.items(k)) for k in range(3)] == [[0, 1], [2, 3], [4]]
  _write(parts)
  os.remove(arrayrecord_io.sidecar_path(folder, "part-00001-of-00003"))  # Killed mid-part 1.
  again, written = parts_lib.Parts(folder, 5, 2, plan={"seed": 0}), []
  assert again.todo() == [1]
  _write(again, written)
  assert written == [2, 3]
  side = again.merge(str(tmp_path), "videos", metadata={"source": "test"})
  ids = [r.id for r in arrayrecord_io.iter_records(str(tmp_path), "videos")]
  assert side["num_records"] == 5 and ids == [f"v{i}" for i in range(5)]
  assert side["metadata"]["source"] == "test"
  np.testing.assert_array_equal(next(arrayrecord_io.iter_records(str(tmp_path), "videos")).latent,
                                _record(0).latent)


def test_another_plan_is_refused_naming_what_differs(tmp_path):
  folder = str(tmp_path / "parts")
  parts_lib.Parts(folder, 5, 2, plan={"seed": 0, "steps": 16})
  with pytest.raises(ValueError, match=r"plan\.json.*seed: 0 there, 1 now") as err:
    parts_lib.Parts(folder, 5, 2, plan={"seed": 1, "steps": 16})
  assert "steps" not in str(err.value)  # Only what differs.
  parts_lib.Parts(folder, 5, 2, plan={"seed": 0, "steps": 16})  # The same plan resumes.


def test_a_missing_part_is_named_and_nothing_is_merged(tmp_path):
  parts = parts_lib.Parts(str(tmp_path / "parts"), 5, 2)
  with parts.writer(0) as writer:
    for i in parts.items(0):
      writer.write(_record(i))
  with pytest.raises(FileNotFoundError,
                     match=r"2 of 3 parts missing \(e\.g\. part-00001-of-00003\)"):
    parts.merge(str(tmp_path), "videos")
  assert not os.path.exists(arrayrecord_io.sidecar_path(str(tmp_path), "videos"))


def test_empty_parts_can_be_left_out(tmp_path):
  parts = parts_lib.Parts(str(tmp_path / "parts"), 4, 2)
  with parts.writer(0, metadata={"skipped": [{"id": "v0"}, {"id": "v1"}]}):
    pass  # Every item of part 0 skipped.
  with parts.writer(1) as writer:
    for i in parts.items(1):
      writer.write(_record(i))
  assert [s["metadata"]["skipped"] for s in parts.sidecars()[:1]] == [[{"id": "v0"}, {"id": "v1"}]]
  side = parts.merge(str(tmp_path), "videos", drop_empty=True)
  assert side["num_records"] == 2
  only_empty = parts_lib.Parts(str(tmp_path / "empty"), 2, 2)
  with only_empty.writer(0):
    pass
  with pytest.raises(ValueError, match="every part is empty"):
    only_empty.merge(str(tmp_path), "nothing", drop_empty=True)


def test_a_url_and_bad_sizes_are_refused_before_writing(tmp_path):
  with pytest.raises(ValueError, match=r"gs://bucket/parts: ArrayRecord datasets are read and "
                                       r"written on local paths only"):
    parts_lib.Parts("gs://bucket/parts", 5, 2, plan={"seed": 0})
  with pytest.raises(ValueError, match=r"0 items in parts of 2"):
    parts_lib.Parts(str(tmp_path / "p"), 0, 2, plan={"seed": 0})
  assert not os.path.exists(tmp_path / "p")


def test_with_several_processes_each_writes_its_share(tmp_path, monkeypatch):
  folder = str(tmp_path / "parts")
  # Process 1 of 2: parts 1, 3 (distributed.my_items deals parts round-robin).
  monkeypatch.setattr(parts_lib.distributed, "my_items", lambda n: range(1, n, 2))
  parts = parts_lib.Parts(folder, 9, 2, split_over_processes=True)
  assert parts.todo() == [1, 3]
  _write(parts)
  assert [parts.committed(k) for k in range(parts.num_parts)] == [False, True, False, True, False]
  monkeypatch.setattr(parts_lib.distributed, "barrier", lambda name: None)
  with pytest.raises(FileNotFoundError, match=r"3 of 5 parts missing.*folder must be one they "
                                              r"all share"):
    parts.merge(str(tmp_path), "videos")
