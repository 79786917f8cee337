"""DenseDPO: guided pairs (Algo. 2), segment labels, dense DPO loss (Eq. 7).

See configs/dpo_common.py for the args: shapesworld (default, the whole arm) and paper.
"""
from configs.dpo_common import dpo_config


def get_config(arg=None):
  return dpo_config("dense_dpo", "guided", "segment", arg)
