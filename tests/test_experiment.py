"""The experiment driver at a miniature budget: every arm and seed runs, the report has every
column and arm, label budgets are the first pairs of one shared pair set, reruns are cached."""
import json
import os

import numpy as np
import pytest

from configs import experiment as experiment_config
from densedpo_jax import experiment, experiment_report
from densedpo_jax.data import arrayrecord_io
from tests.conftest import TINY_MODEL


def _config(root, results):
  c = experiment_config.get_config("mini")
  c.model.update(**TINY_MODEL)
  c.init_from = str(root / "base")
  c.videos.update(kind="videos", path=str(root / "videos"), name="train")
  c.data.read_threads = 0
  c.async_checkpointing = False
  c.mesh.num_devices = 1
  c.experiment.results = results
  c.lock()  # As on the command line: a mistyped key is an error.
  return c


def test_every_arm_runs_and_the_report_has_every_column(world, tmp_path):
  workdir, results_md = str(tmp_path / "exp"), str(tmp_path / "results" / "sw.md")
  c = _config(world, results_md)
  out = experiment.main(c, workdir)
  n, seeds = c.experiment.labeled_pairs, list(c.experiment.seeds)

  runs = {(r["arm"], r["seed"]) for r in out["runs"]}
  want = {("pretrained", seeds[0])} | {(a, s) for a in experiment.ARMS if a != "pretrained"
                                       for s in seeds}
  assert runs == want
  labeled = {r["arm"]: r["labels"]["labeled"] for r in out["runs"] if r["labels"]}
  assert labeled == {"vanilla": 3 * n, "structural": 3 * n, "structural_mv": 3 * n, "dense": n,
                     "dense_flip40": n, "dense_half": n // 2}
  # Every trained run logged every step; the first seed also has its early checkpoint scored.
  for r in out["runs"]:
    if r["arm"] != "pretrained":
      assert sorted(map(int, r["train"])) == list(range(1, c.total_steps + 1))
      assert (r["eval_early"] is not None) == (r["seed"] == seeds[0])

  # The training seed changes the run (LoRA init, data order, noise). Not visible at step 1,
  # where policy == reference and every seed's loss is log 2 up to rounding.
  dense = {r["seed"]: r["train"] for r in out["runs"] if r["arm"] == "dense"}
  last = str(c.total_steps)
  assert dense[seeds[0]][last]["loss"] != dense[seeds[1]][last]["loss"]

  # One guided pair set serves every guided arm: DenseDPO's N labels are the first N of the
  # majority-vote arm's 3N segment labels (same oracle, same pairs).
  pair_dir = os.path.join(workdir, "pairs_guided")
  full = {r.id: r for r in arrayrecord_io.iter_records(pair_dir, f"labels_segment_n{3 * n}")}
  dense = {r.id: r for r in arrayrecord_io.iter_records(pair_dir, f"labels_segment_n{n}")}
  source = arrayrecord_io.ShardedSource(pair_dir, "pairs")
  assert sorted(dense) == sorted(arrayrecord_io.decode_raw(source[i]).id for i in range(n))
  assert len(full) == 3 * n
  for pid, rec in dense.items():
    np.testing.assert_array_equal(rec.segment_labels, full[pid].segment_labels)
  assert len(list(arrayrecord_io.iter_records(os.path.join(workdir, "pairs_vanilla"), "pairs"))) == 3 * n

  text = open(results_md).read()
  table = text.split("## Held-out metrics")[1].split("##")[0]
  header = next(line for line in table.splitlines() if line.startswith("| method"))
  for _, title in experiment_report.COLUMNS:
    assert f"| {title} " in header
  rows = [line for line in table.splitlines() if line.startswith("| ") and line != header]
  assert [row.split(" | ")[0][2:] for row in rows] == [a.title for a in experiment.ARMS.values()]
  cols = len(header.split(" | "))
  assert all(len(row.split(" | ")) == cols for row in rows)
  dense_row = next(row for row in rows if row.startswith("| DenseDPO |"))
  vq = [r["eval"]["visual_quality"] for r in out["runs"] if r["arm"] == "dense"]
  assert f"{np.mean(vq):.3f} ± {np.std(vq, ddof=1):.3f}" in dense_row  # sample std over seeds
  assert os.path.exists(os.path.join(os.path.dirname(results_md), "sw_appendix_b.png"))
  assert "![Appendix B](sw_appendix_b.png)" in text
  saved = json.load(open(os.path.join(os.path.dirname(results_md), "sw.json")))
  assert saved["label_bias"]["vanilla"]["labeled"] == 3 * n

  # A rerun reads every finished run from disk: no run record is rewritten.
  stamps = {p: os.path.getmtime(p) for p in _run_files(workdir)}
  experiment.main(c, workdir)
  assert {p: os.path.getmtime(p) for p in _run_files(workdir)} == stamps
  # ... unless the settings changed: then it says which, instead of reusing stale runs.
  c.unlock()
  c.dpo.beta = 2 * c.dpo.beta
  with pytest.raises(ValueError, match="run.json was run with other settings \\(beta"):
    experiment.main(c, workdir)
  # Pair and label sets are reused only for the same count and labeler settings.
  with pytest.raises(ValueError, match=f"exist with {3 * n} guided pairs; this run wants {3 * n - 1}"):
    experiment.pair_set(c, workdir, "guided", 3 * n - 1)
  c.label.tie_margin = 0.5
  with pytest.raises(ValueError, match=f"labels_segment_n{n} exist with other settings"):
    experiment.label_set(c, workdir, experiment.ARMS["dense"])


def _run_files(workdir):
  for d, _, files in os.walk(os.path.join(workdir, "runs")):
    for f in files:
      if f == "run.json":
        yield os.path.join(d, f)


def test_mean_std_is_the_sample_std():
  assert experiment_report.mean_std([1.0, 2.0, 3.0]) == "2.000 ± 1.000"
  assert experiment_report.mean_std([0.5]) == "0.500"
  assert experiment_report.mean_std([float("nan"), None]) == "–"


def test_unknown_arm_is_an_error():
  with pytest.raises(ValueError, match="unknown \\['densest'\\]"):
    experiment.parse_arms("dense,densest")
