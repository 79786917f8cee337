"""Evaluation (task=evaluate) on held-out ShapesWorld prompts, scored by the judge.

    python -m densedpo_jax.main --config=configs/evaluate.py \
        --config.evaluate.models=base=assets/shapesworld_base,dense=workdirs/dense/train
"""
import ml_collections

from configs import common


def get_config(arg=None):
  del arg
  c = common.base()
  c.task = "evaluate"
  c.data.kind = "shapesworld"
  c.data.path = "workdirs/tfds"
  c.data.split = "heldout"
  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.models = "base=workdirs/pretrain"
  c.evaluate.judge = "shapesworld"  # shapesworld | none (export samples for external tools)
  c.evaluate.max_prompts = 64
  c.evaluate.seeds_per_prompt = 4
  c.evaluate.num_steps = 32
  c.evaluate.cfg_scale = 1.0
  c.evaluate.batch_size = 32
  c.evaluate.seed = 1234
  c.evaluate.frames_per_segment = 4
  c.evaluate.preview_prompts = 8
  return c
