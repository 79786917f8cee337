"""DenseDPO: guided pairs (Algo. 2), segment labels, dense DPO loss (Eq. 7).

  shapesworld (default)  the tiny DiT on ShapesWorld pairs, on CPU
  paper                  the paper's hyper-parameters (LoRA 128, batch 256, 1k steps, warm-up 250)
"""
from configs.dpo_common import dpo_config


def get_config(arg=None):
  return dpo_config("dense_dpo", "workdirs/pairs_guided", arg)
