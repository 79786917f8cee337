"""What the DPO jobs (vanilla, structural, dense) share.

  shapesworld (default)  the whole arm on ShapesWorld (task=pipeline): pairs from the shipped
                         base model, oracle labels, LoRA DPO, evaluation on held-out prompts
  paper                  training only (task=train) with the paper's hyper-parameters on pairs
                         you provide (--config.data.path, --config.init_from)
  wan1.3b, wan14b        the same on Wan 2.1 T2V 1.3B / 14B (init_from: a diffusers transformer/
                         folder or its `python -m densedpo_jax.convert` output)
  wan2.1-i2v-14b, wan2.2-ti2v-5b, wan2.2-t2v-a14b-high / -low / -both, wan2.2-i2v-a14b-(same)
                         the same on those models (init_from: the diffusers pipeline folder;
                         an A14B run adapts the expert its arg names, or both)
"""
import ml_collections

from configs import common
from configs import evaluate as evaluate_config
from configs import label as label_config
from configs import pairs as pairs_config

SHIPPED_BASE = "assets/shapesworld_base"


def dpo_config(loss: str, pair_mode: str, labeler: str, arg=None):
  arg = arg or "shapesworld"
  c = common.base()
  c.loss = loss
  c.init_from = SHIPPED_BASE
  c.data.kind = "pairs"
  c.data.path = ""  # Empty: the pipeline generates and labels pairs in the workdir.
  c.data.name = "pairs"
  c.data.batch_size = 16
  c.lora.rank, c.lora.alpha = 16, 16.0
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 10
  c.total_steps = 100
  c.log_every = 10
  c.checkpoint_every = 50
  if common.split_expert(arg)[0] in common.SCALED_MODELS:
    c.init_from = ""
    common.paper_scale(c, common.training_model(c, arg))
    return c
  if arg != "shapesworld":
    raise ValueError(f"unknown config arg {arg!r}; expected 'shapesworld' or one of "
                     f"{common.training_args()}")
  c.task = "pipeline"
  c.videos = ml_collections.ConfigDict({"kind": "shapesworld", "path": "workdirs/tfds",
                                        "split": "train", "split_eval": "heldout",
                                        "name": "videos"})
  c.pairs = pairs_config.get_config(pair_mode).pairs
  c.pairs.update(num_pairs=256, pairs_per_part=64, num_steps=16)
  c.label = label_config.get_config(labeler).label
  c.evaluate = evaluate_config.get_config().evaluate
  c.evaluate.update(seeds_per_prompt=2, num_steps=16)
  return c
