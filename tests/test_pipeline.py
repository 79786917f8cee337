"""A miniature ShapesWorld arm through every task: base model, pairs, labels, DPO, evaluation."""
import json
import os

import pytest

from configs import dense
from densedpo_jax.tasks import arm
from densedpo_jax.data import arrayrecord_io
from tests.helpers import TINY_MODEL

pytestmark = pytest.mark.e2e  # Whole jobs through their stages.


def _config(root):
  c = dense.get_config()
  c.model.update(**TINY_MODEL)
  c.init_from = str(root / "base")
  c.videos.update(kind="videos", path=str(root / "videos"), name="train", split_eval="heldout")
  c.pairs.update(num_pairs=6, pairs_per_part=4, batch_size=2, num_steps=4)
  c.label.tie_margin = 0.0  # A 3-step base model draws noise: any quality difference labels.
  c.data.update(batch_size=2, read_threads=0, min_nontie_frac=0.0)
  c.update(total_steps=2, log_every=1, checkpoint_every=2, async_checkpointing=False)
  c.mesh.num_devices = 1
  c.evaluate.update(max_prompts=2, seeds_per_prompt=1, num_steps=3, batch_size=2)
  return c


def test_every_stage_runs_and_reruns_are_cached(world, tmp_path):
  workdir = str(tmp_path)
  c = _config(world)
  # The eval stage reads the held-out split by name: point videos.name at it for that stage.
  c.videos.split_eval = "heldout"
  results = arm.main(c, workdir)
  assert set(results) == {"base", "dense_dpo"}
  assert all(set(r) == set(arm.evaluate.METRICS) | {"per_prompt"} for r in results.values())
  # Each prompt's scores, in prompt order, average to the model's (equal samples a prompt).
  for r in results.values():
    for metric in arm.evaluate.METRICS:
      assert abs(sum(r["per_prompt"][metric]) / len(r["per_prompt"][metric]) - r[metric]) < 1e-9
  pairs_side = arrayrecord_io.read_sidecar(os.path.join(workdir, "pairs"), "pairs")
  labeled = list(arrayrecord_io.iter_records(os.path.join(workdir, "pairs"), "pairs_segment"))
  assert pairs_side["num_records"] == 6 and len(labeled) == 6
  assert all(r.labeler and r.segment_labels is not None and r.source == "guided" for r in labeled)
  table = open(os.path.join(workdir, "eval", "table.md")).read()
  assert "| base |" in table and "| dense_dpo |" in table
  assert json.load(open(os.path.join(workdir, "eval", "metrics.json")))["num_prompts"] == 2

  stamp = os.path.getmtime(os.path.join(workdir, "pairs", "pairs_segment.json"))
  arm.main(c, workdir)  # Everything cached: pairs and labels untouched, training done.
  assert os.path.getmtime(os.path.join(workdir, "pairs", "pairs_segment.json")) == stamp
  steps = os.listdir(os.path.join(workdir, "train", "checkpoints"))
  assert sorted(s for s in steps if s.isdigit()) == ["2"]
