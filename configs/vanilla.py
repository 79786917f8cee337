"""VanillaDPO: independent-noise pairs (Algo. 1), one label a pair, Flow-DPO loss.

  shapesworld (default)  the tiny DiT on ShapesWorld pairs, on CPU
  paper                  the paper's hyper-parameters (LoRA 128, batch 256, 1k steps, warm-up 250)
"""
from configs.dpo_common import dpo_config


def get_config(arg=None):
  return dpo_config("flow_dpo", "workdirs/pairs_vanilla", arg)
