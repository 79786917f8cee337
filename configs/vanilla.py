"""VanillaDPO: independent-noise pairs (Algo. 1), whole-video labels, Flow-DPO loss.

See configs/dpo_common.py for the args: shapesworld (default, the whole arm) and paper.
"""
from configs.dpo_common import dpo_config


def get_config(arg=None):
  return dpo_config("flow_dpo", "vanilla", "global", arg)
