"""The experiment driver at a miniature budget: every arm and seed runs, the report has every
column and arm, label budgets are the first pairs of one shared pair set, reruns are cached."""
import glob
import json
import os

import numpy as np
import pytest

from projects.shapesworld_paper import experiment, report, stats
from projects.shapesworld_paper.configs import experiment as experiment_config
from densedpo_jax.data import arrayrecord_io
from tests.helpers import TINY_MODEL


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


@pytest.mark.e2e
def test_every_arm_runs_and_the_report_has_every_column(world, tmp_path):
  workdir, results_md = str(tmp_path / "exp"), str(tmp_path / "results" / "sw.md")
  c = _config(world, results_md)
  out = experiment.main(c, workdir)
  n, seeds = c.experiment.labeled_pairs, list(c.experiment.seeds)
  eval_seeds = [str(s) for s in c.experiment.eval_seeds]

  runs = {(r["arm"], r["seed"]) for r in out["runs"]}
  want = {("pretrained", seeds[0])} | {(a, s) for a in experiment.ARMS if a != "pretrained"
                                       for s in seeds}
  assert runs == want
  labeled = {r["arm"]: r["labels"]["labeled"] for r in out["runs"] if r["labels"]}
  assert labeled == {"vanilla": 3 * n, "structural": 3 * n, "structural_mv": 3 * n, "dense": n,
                     "dense_flip40": n, "dense_half": n // 2}
  # Every trained run logged every step and has its early checkpoint scored, under every
  # evaluation seed; every record carries its settings and the code version.
  for r in out["runs"]:
    assert sorted(r["eval"]) == eval_seeds
    assert r["settings"] and r["code"]
    if r["arm"] != "pretrained":
      assert sorted(map(int, r["train"])) == list(range(1, c.total_steps + 1))
      assert sorted(r["eval_early"]) == eval_seeds
      assert r["settings"]["seed"] == r["seed"] and r["settings"]["dpo.beta"] == c.dpo.beta
  # The two evaluation seeds draw different noise: the samples, hence some scores, differ.
  base = next(r for r in out["runs"] if r["arm"] == "pretrained")["eval"]
  assert base[eval_seeds[0]]["per_prompt"] != base[eval_seeds[1]]["per_prompt"]
  # Per-prompt scores average to the model's score (the prompts have equal sample counts).
  pp = base[eval_seeds[0]]["per_prompt"]["visual_quality"]
  assert len(pp) == c.evaluate.max_prompts
  np.testing.assert_allclose(np.mean(pp), base[eval_seeds[0]]["visual_quality"], rtol=1e-9)

  # The training seed changes the run (LoRA init, data order, noise). Not in the loss of these
  # 2 steps: the warm-up's first learning rate is 0, so at both steps policy == reference and
  # every seed's loss is log 2 (exactly, when the LoRA-on and LoRA-off passes round alike); the
  # gradients, of other pairs and noise, differ.
  dense = {r["seed"]: r["train"] for r in out["runs"] if r["arm"] == "dense"}
  last = str(c.total_steps)
  assert dense[seeds[0]][last]["grad_norm"] != dense[seeds[1]][last]["grad_norm"]

  # One guided pair set serves every guided arm: DenseDPO's N labels are the first N of the
  # majority-vote arm's 3N segment labels (same oracle, same pairs).
  [pair_dir] = glob.glob(os.path.join(workdir, "pairs_guided_*"))
  labels = {r["arm"]: r["labels"] for r in out["runs"] if r["labels"]}
  assert {labels[a]["path"] for a in ("dense", "structural", "structural_mv")} == {pair_dir}
  full_name, dense_name = labels["structural_mv"]["name"], labels["dense"]["name"]
  assert full_name.startswith(f"labels_segment_n{3 * n}_") and dense_name != labels["dense_flip40"]["name"]
  full = {r.id: r for r in arrayrecord_io.iter_records(pair_dir, full_name)}
  dense = {r.id: r for r in arrayrecord_io.iter_records(pair_dir, dense_name)}
  source = arrayrecord_io.ShardedSource(pair_dir, "pairs")
  assert sorted(dense) == sorted(arrayrecord_io.decode_raw(source[i]).id for i in range(n))
  assert len(full) == 3 * n
  for pid, rec in dense.items():
    np.testing.assert_array_equal(rec.segment_labels, full[pid].segment_labels)
  [vanilla_dir] = glob.glob(os.path.join(workdir, "pairs_vanilla_*"))
  assert len(list(arrayrecord_io.iter_records(vanilla_dir, "pairs"))) == 3 * n

  text = open(results_md).read()
  for s in eval_seeds:
    table = text.split(f"## Metrics, evaluation seed {s}")[1].split("##")[0]
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    for _, title in report.COLUMNS:
      assert f"| {title} " in header
    rows = [line for line in table.splitlines() if line.startswith("| ") and line != header]
    assert [row.split(" | ")[0][2:] for row in rows] == [a.title for a in experiment.ARMS.values()]
    cols = len(header.split(" | "))
    assert all(len(row.split(" | ")) == cols for row in rows)
    dense_row = next(row for row in rows if row.startswith("| DenseDPO |"))
    vq = [r["eval"][s]["visual_quality"] for r in out["runs"] if r["arm"] == "dense"]
    assert f"{np.mean(vq):.3f} ± {np.std(vq, ddof=1):.3f}" in dense_row  # sample std over seeds
  assert "## The paper's claims" in text and "## Against the pretrained model" in text
  assert os.path.exists(os.path.join(os.path.dirname(results_md), "sw_appendix_b.png"))
  assert "![Appendix B](sw_appendix_b.png)" in text
  assert "![quality against motion](sw_tradeoff.png)" in text
  assert os.path.exists(os.path.join(os.path.dirname(results_md), "sw_tradeoff.png"))
  assert "## Does a DenseDPO variant keep motion and quality?" in text
  saved = json.load(open(os.path.join(os.path.dirname(results_md), "sw.json")))
  assert saved["label_bias"]["vanilla"]["labeled"] == 3 * n

  # A rerun reads every finished run from disk: no record is rewritten.
  stamps = {p: os.path.getmtime(p) for p in _run_files(workdir)}
  experiment.main(c, workdir)
  assert {p: os.path.getmtime(p) for p in _run_files(workdir)} == stamps
  # Other settings are another run (its own folder): the old records stay, nothing is reused.
  c.unlock()
  c.dpo.beta = 2 * c.dpo.beta
  c.experiment.arms = "dense:steps=1"
  c.experiment.seeds = (0,)
  again = experiment.main(c, workdir)
  [run] = again["runs"]
  assert run["settings"]["dpo.beta"] == c.dpo.beta and run["settings"]["total_steps"] == 1
  assert run["dir"] not in {r["dir"] for r in out["runs"]} and run["eval_early"] is None
  # The training seeds of one arm share its settings' folder.
  dirs = {os.path.dirname(r["dir"]) for r in out["runs"] if r["arm"] == "dense"}
  assert len(dirs) == 1
  assert {p: os.path.getmtime(p) for p in stamps} == stamps
  # Pair sets are reused when they hold enough pairs; label sets only for the same settings.
  assert experiment.pair_set(c, workdir, "guided", n) == pair_dir
  c.label.tie_margin = 0.5
  other = experiment.label_set(c, workdir, experiment.ARMS["dense"], n)
  assert other["name"] != dense_name and other["labeled"] == n


def _run_files(workdir):
  for d, _, files in os.walk(os.path.join(workdir, "runs")):
    for f in files:
      if f == "train.json" or (f.startswith("eval_") and f.endswith(".json")):
        yield os.path.join(d, f)


def test_mean_std_is_the_sample_std():
  assert report.mean_std([1.0, 2.0, 3.0]) == "2.000 ± 1.000"
  assert report.mean_std([0.5]) == "0.500"
  assert report.mean_std([float("nan"), None]) == "–"


def test_unknown_arm_is_an_error():
  with pytest.raises(ValueError, match="unknown \\['densest'\\]"):
    experiment.parse_arms("dense,densest")


def test_arm_settings_parse_into_config_overrides_and_titles():
  [plain, tuned, eta] = experiment.parse_arms("dense, vanilla:beta=2500:steps=50,dense:eta=0.2-0.4")
  assert plain.overrides == () and plain.title == "DenseDPO"
  assert dict(tuned.overrides) == {"dpo.beta": 2500.0, "total_steps": 50}
  assert tuned.title == "VanillaDPO (beta 2500, 50 steps)"
  assert dict(eta.overrides) == {"pairs.eta_range": (0.2, 0.4)}
  [variant] = experiment.parse_arms("dense:pos=1:gt=125:reduce=sum")
  assert dict(variant.overrides) == {"dpo.positive_lambda": 1.0, "dpo.gt_lambda": 125.0,
                                     "dpo.pair_reduction": "sum", "pairs.store_gt": True}
  assert variant.title == ("DenseDPO (DPO-Positive lambda 1, ground-truth flow term lambda 125, "
                           "pair reduction sum)")
  with pytest.raises(ValueError, match="'gamma=1' is not key=value with a key of"):
    experiment.parse_arms("dense:gamma=1")
  with pytest.raises(ValueError, match="names an arm twice"):
    experiment.parse_arms("dense,dense")
  with pytest.raises(ValueError, match="'dense:steps=many'"):
    experiment.parse_arms("dense:steps=many")


def test_only_the_published_calls_write_into_the_published_results():
  results = os.path.join("projects", "shapesworld_paper", "results")
  for arg in ("shapesworld", "tuned", "tune", "motion", "objective"):
    path = experiment_config.get_config(arg).experiment.results
    assert os.path.dirname(path) == results and path.endswith(".md"), (arg, path)
  assert experiment_config.get_config("mini").experiment.results == ""  # Its workdir's report.md.


def test_claims_hold_only_when_the_interval_excludes_zero_under_every_seed():
  def runs(values_by_seed):
    return [{"eval": {s: {"per_prompt": {"fast_share": v}} for s, v in values_by_seed.items()}}]
  base = runs({"1": [0.5] * 8, "2": [0.5] * 8})
  slower = runs({"1": [0.3] * 8, "2": [0.5, 0.4] * 4})      # lower under both seeds
  mixed = runs({"1": [0.3] * 8, "2": [0.2, 0.8] * 4})       # lower under seed 1 only
  text = stats.claims_table({"vanilla": slower, "pretrained": base}, ["1", "2"])
  [row] = [line for line in text.splitlines() if line.startswith("| VanillaDPO slows")]
  assert row.count("holds") == 2 and row.endswith("| yes |")
  text = stats.claims_table({"vanilla": mixed, "pretrained": base}, ["1", "2"])
  [row] = [line for line in text.splitlines() if line.startswith("| VanillaDPO slows")]
  assert "holds" in row and "fails" in row and row.endswith("| no |")
  # The sentences say what the rows say: hand-computed means -0.2 / -0.05, then -0.2 / 0.0.
  assert stats.claim_verdicts({"vanilla": slower, "pretrained": base}, ["1", "2"]) == (
      "1. **VanillaDPO slows clips down: reproduced.** fast_share, vanilla minus pretrained: "
      "-0.200 / -0.050.")
  assert stats.claim_verdicts({"vanilla": mixed, "pretrained": base}, ["1", "2"]) == (
      "1. **VanillaDPO slows clips down: not reproduced (holds under eval seed 1, fails under "
      "eval seed 2).** fast_share, vanilla minus pretrained: -0.200 / +0.000.")


@pytest.mark.e2e
def test_arm_settings_reach_the_pairs_labels_and_training(world, tmp_path):
  c = _config(world, str(tmp_path / "results" / "m.md"))
  c.unlock()
  c.experiment.update(arms="dense:fps=1:wins=faster:eta=0.3-0.35:gt=5:pos=1:reduce=sum", seeds=(0,),
                      eval_seeds=(7,))
  c.experiment.appendix_b.num_videos = 0
  c.label.tie_margin = 0.01
  out = experiment.main(c, str(tmp_path / "exp"))
  [run] = out["runs"]
  assert run["title"] == ("DenseDPO (1 frames a segment, only faster members' segment wins, eta 0.3-0.35, "
                          "ground-truth flow term lambda 5, DPO-Positive lambda 1, pair reduction sum)")
  assert (run["settings"]["dpo.gt_lambda"], run["settings"]["dpo.positive_lambda"],
          run["settings"]["dpo.pair_reduction"], run["settings"]["pairs.store_gt"]) == (5.0, 1.0, "sum", True)
  assert all("gt_flow_loss" in step for step in run["train"].values())
  assert run["settings"]["pairs.frames_per_segment"] == 1
  assert run["settings"]["label.keep_wins"] == "faster"
  assert run["settings"]["pairs.eta_range"] == [0.3, 0.35]
  recs = list(arrayrecord_io.iter_records(run["labels"]["path"], run["labels"]["name"]))
  assert recs and all(r.frames_per_segment == 1 and r.labeler_params["keep_wins"] == "faster"
                      and 0.3 <= r.eta <= 0.35 and r.gt_latent is not None for r in recs)
  assert all(len(r.segment_labels) == r.num_frames for r in recs)
  assert list(run["eval"]) == ["7"]
