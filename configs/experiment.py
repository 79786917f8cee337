"""The ShapesWorld reproduction of the paper's findings (task=experiment, experiment.py).

    python -m densedpo_jax.main --config=configs/experiment.py           # about 75 min, 2 cores
    python -m densedpo_jax.main --config=configs/experiment.py:mini      # the driver at a toy budget

  shapesworld (default)  8 arms x 3 training seeds from the shipped base model; writes
                         results/shapesworld.md and results/shapesworld_appendix_b.png
  mini                   2 seeds, a few pairs and steps: checks that every arm runs
Every DPO setting comes from configs/dpo_common.py (the main job's), so the DenseDPO arm is the
main job at the experiment's pair budget.
"""
import ml_collections

from configs import dpo_common
from densedpo_jax.experiment import ARMS


def get_config(arg=None):
  arg = arg or "shapesworld"
  if arg not in ("shapesworld", "mini"):
    raise ValueError(f"configs/experiment.py: unknown arg {arg!r}; expected 'shapesworld' or 'mini'")
  c = dpo_common.dpo_config("dense_dpo", "guided", "segment", "shapesworld")
  c.task = "experiment"
  c.pairs.pairs_per_part = 128
  c.evaluate.seeds_per_prompt = 4  # 18 held-out prompts x 4: 72 samples a model.
  e = c.experiment = ml_collections.ConfigDict()
  e.arms = ",".join(ARMS)
  e.seeds = (0, 1, 2)
  e.labeled_pairs = 128  # N: DenseDPO's labeled pairs; Vanilla and StructuralDPO get 3N.
  e.early_step = 50  # Also evaluate this checkpoint of the first seed (drift); 0: never.
  e.results = "results/shapesworld.md"
  e.appendix_b = ml_collections.ConfigDict({
      "pool": 64,          # training videos to choose from (those whose shape covers the patch)
      "num_videos": 8, "draws": 8, "seed": 0,
      # Patch side / frame side: 8 x 8 of 16 x 16, 25% of the area. The paper's patch is 6.25%
      # of the area, but a 4 x 4 patch holds only part of a ShapesWorld shape.
      "patch_frac": 0.5,
      "blur_fracs": (0.0, 0.0625, 0.125, 0.25, 0.5)})  # blur sigma / patch side (the paper's)
  if arg == "mini":
    e.seeds = (0, 1)
    e.labeled_pairs = 4
    e.early_step = 1
    e.appendix_b.update(pool=4, num_videos=2, draws=1)
    c.pairs.update(pairs_per_part=4, batch_size=4, num_steps=2)
    c.data.update(batch_size=2, min_nontie_frac=0.0)
    c.label.tie_margin = 0.0
    c.update(total_steps=2, log_every=1, checkpoint_every=1)
    c.evaluate.update(max_prompts=2, seeds_per_prompt=1, num_steps=2, batch_size=2)
  return c
