"""JSON Lines label import / export and the dataset summary."""
import dataclasses
import json
import math

import numpy as np
import pytest

from densedpo_jax.data import arrayrecord_io
from densedpo_jax.data import labels_io
from densedpo_jax.data import summary
from densedpo_jax.data import synthetic

SHAPE = (9, 2, 2, 1)  # pixel space, 9 frames, segments of 3 -> S = 3


def _write(directory, n=6, labeled=False):
  rng = np.random.default_rng(0)
  recs = [synthetic.random_pair(rng, f"p{i}", latent_shape=SHAPE, frames_per_segment=3, labeled=labeled,
                                latent_dtype="float16") for i in range(n)]
  arrayrecord_io.write_records(recs, str(directory), "pairs", num_shards=2)
  return recs


def _lines(path):
  return [json.loads(l) for l in open(path)]


def test_export_fill_import_round_trip(tmp_path):
  recs = _write(tmp_path)
  n = labels_io.export_labels(str(tmp_path), "pairs", str(tmp_path / "todo.jsonl"))
  lines = _lines(tmp_path / "todo.jsonl")
  assert n == 6 and {l["id"] for l in lines} == {r.id for r in recs}
  assert all(l["segment_labels"] is None and l["num_segments"] == 3 and "prompt" in l for l in lines)
  rng = np.random.default_rng(1)
  want = {}
  for l in lines:  # the annotator fills the file in place
    l["segment_labels"] = rng.choice([-1, 0, 1], 3).tolist()
    l["global_label"] = int(rng.choice([-1, 0, 1]))
    want[l["id"]] = (l["segment_labels"], l["global_label"])
  (tmp_path / "done.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  stats = labels_io.import_labels(str(tmp_path / "done.jsonl"), str(tmp_path), "pairs", str(tmp_path), "labeled",
                                  labeler="human", labeler_params={"round": 1})
  assert stats == {"labeled": 6, "unchanged": 0}
  before = {r.id: r for r in recs}
  for r in arrayrecord_io.iter_records(str(tmp_path), "labeled"):
    assert r.segment_labels.tolist() == want[r.id][0] and r.global_label == want[r.id][1]
    assert r.labeler == "human" and r.labeler_params == {"round": 1}
    np.testing.assert_array_equal(r.latent_a, before[r.id].latent_a)  # latents untouched
  labels_io.export_labels(str(tmp_path), "labeled", str(tmp_path / "again.jsonl"))
  again = {l["id"]: (l["segment_labels"], l["global_label"]) for l in _lines(tmp_path / "again.jsonl")}
  assert again == want


def test_an_export_that_fails_midway_leaves_the_old_file_whole(tmp_path):
  _write(tmp_path)
  (tmp_path / "todo.jsonl").write_text('{"id": "p0", "segment_labels": [1, 0, 1]}\n')  # Work.
  # A dataset of videos, not pairs: the export stops (it used to truncate the file first).
  videos = [synthetic.random_video(np.random.default_rng(i), f"v{i}", latent_shape=SHAPE)
            for i in range(2)]
  arrayrecord_io.write_records(videos, str(tmp_path / "videos"), "clips", num_shards=1)
  with pytest.raises(ValueError, match="holds video records, not pairs"):
    labels_io.export_labels(str(tmp_path / "videos"), "clips", str(tmp_path / "todo.jsonl"))
  assert _lines(tmp_path / "todo.jsonl") == [{"id": "p0", "segment_labels": [1, 0, 1]}]
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".todo")) == []


def test_partial_labels_keep_other_pairs_and_in_place_rewrite(tmp_path):
  _write(tmp_path)
  (tmp_path / "some.jsonl").write_text(json.dumps({"id": "p2", "global_label": -1}) + "\n\n")
  stats = labels_io.import_labels(str(tmp_path / "some.jsonl"), str(tmp_path), "pairs", str(tmp_path), "pairs")
  assert stats == {"labeled": 1, "unchanged": 5}
  got = {r.id: r for r in arrayrecord_io.iter_records(str(tmp_path), "pairs")}
  assert got["p2"].global_label == -1 and got["p2"].segment_labels is None and got["p2"].labeler == "human"
  assert got["p1"].global_label is None and got["p1"].labeler is None
  with pytest.raises(labels_io.LabelImportError, match="no labels for 5 pair"):
    labels_io.import_labels(str(tmp_path / "some.jsonl"), str(tmp_path), "pairs", str(tmp_path), "x",
                            require_all=True)


def test_every_bad_line_is_reported_and_nothing_written(tmp_path):
  _write(tmp_path)
  lines = [
      json.dumps({"id": "p0", "segment_labels": [1, 0, -1], "global_label": 1}),  # fine
      json.dumps({"id": "nope", "segment_labels": [1, 0, 1]}),
      json.dumps({"id": "p1", "segment_labels": [1, 0]}),
      json.dumps({"id": "p2", "segment_labels": [1, 2, 0]}),
      json.dumps({"id": "p3", "global_label": 5}),
      "{not json",
      json.dumps({"segment_labels": [1, 1, 1]}),
      json.dumps({"id": "p0", "global_label": 1}),
      json.dumps({"id": "p4", "segment_labels": [1, True, 0]}),
  ]
  (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
  with pytest.raises(labels_io.LabelImportError) as e:
    labels_io.import_labels(str(tmp_path / "bad.jsonl"), str(tmp_path), "pairs", str(tmp_path), "out")
  problems = dict(e.value.problems)
  assert sorted(problems) == [2, 3, 4, 5, 6, 7, 8, 9]
  assert "unknown id 'nope'" in problems[2]
  assert "has 2 values, pair 'p1' has 3 segments" in problems[3]
  assert "values must be in {-1, 0, 1}" in problems[4]
  assert "global_label must be -1, 0 or 1" in problems[5]
  assert "not valid JSON" in problems[6] and "missing 'id'" in problems[7]
  assert "duplicate id 'p0'" in problems[8] and "list of ints" in problems[9]
  assert "bad.jsonl:3:" in str(e.value)
  with pytest.raises(FileNotFoundError):
    arrayrecord_io.read_sidecar(str(tmp_path), "out")
  # Bytes that are not UTF-8 (a file saved in Latin-1) are named by line, not a bare traceback.
  (tmp_path / "latin1.jsonl").write_bytes(lines[0].encode() + b"\n" + '{"id": "p1", "comment": "d\xe9j\xe0"}\n'.encode("latin-1"))
  with pytest.raises(labels_io.LabelImportError, match=r"latin1\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 27\)"):
    labels_io.import_labels(str(tmp_path / "latin1.jsonl"), str(tmp_path), "pairs", str(tmp_path), "out")


def test_summary_counts_and_label_distribution(tmp_path, capsys):
  rng = np.random.default_rng(0)
  seg = [[1, 1, 1], [1, 0, -1], [0, 0, 0], [-1, 1, 0], [0, 0, 1], None]
  recs = []
  for i, s in enumerate(seg):
    r = synthetic.random_pair(rng, f"p{i}", latent_shape=SHAPE, frames_per_segment=3,
                              source="guided" if i < 4 else "vanilla")
    recs.append(dataclasses.replace(r, segment_labels=None if s is None else np.array(s, np.int8),
                                    global_label=None if s is None else int(np.sign(sum(s)))))
  arrayrecord_io.write_records(recs, str(tmp_path), "pairs", num_shards=2)
  s = summary.summarize(str(tmp_path), "pairs")
  assert s["kind"] == "pair" and s["num_records"] == 6 and s["num_shards"] == 2
  assert s["signature"]["latent_shape"] == list(SHAPE) and s["sources"] == {"guided": 4, "vanilla": 2}
  assert s["num_segment_labeled"] == 5 and s["num_global_labeled"] == 5
  assert s["segment_label_share"] == pytest.approx({"-1": 2 / 15, "0": 7 / 15, "1": 6 / 15})
  assert s["tie_share_by_segment"] == pytest.approx([2 / 5, 3 / 5, 2 / 5])
  assert s["mixed_winner_share"] == pytest.approx(2 / 5)  # [1, 0, -1] and [-1, 1, 0]
  assert s["non_uniform_share"] == pytest.approx(3 / 5)
  assert s["dense_kept_share"] == pytest.approx(4 / 5)
  assert s["global_label_share"] == pytest.approx({"-1": 0.0, "0": 3 / 5, "1": 2 / 5})
  assert 0.2 <= s["eta"]["min"] <= s["eta"]["max"] <= 0.8
  assert summary.main([str(tmp_path), "pairs"]) == 0
  out = capsys.readouterr().out
  assert "6 in 2 shards" in out and "mixed winners  40.0%" in out
  summary.main([str(tmp_path), "pairs", "--json"])
  assert json.loads(capsys.readouterr().out)["num_records"] == 6


def test_summary_of_videos(tmp_path):
  rng = np.random.default_rng(0)
  arrayrecord_io.write_records([synthetic.random_video(rng, f"v{i}", latent_shape=(3, 2, 2, 1)) for i in range(3)],
                               str(tmp_path), "videos", num_shards=1)
  s = summary.summarize(str(tmp_path), "videos")
  assert s["kind"] == "video" and s["num_records"] == 3 and s["num_prompts"] == 3
  assert "segment_label_share" not in s and "(video)" in summary.format_summary(s)
  assert not math.isnan(s["bytes_per_record"])
