"""SFT: flow matching with a LoRA adapter on the curated videos (paper A.2: LoRA fine-tuning)."""
from configs import common


def get_config(arg=None):
  arg = arg or "shapesworld"
  c = common.base()
  c.loss = "flow_matching"
  c.init_from = "workdirs/pretrain"
  c.data.kind = "shapesworld"
  c.data.path = "workdirs/tfds"
  c.lora.rank, c.lora.alpha = 16, 16.0
  c.optim.lr = 1e-4
  c.total_steps = 200
  if common.split_expert(arg)[0] in common.SCALED_MODELS:
    common.paper_scale(c, common.training_model(c, arg))
    c.total_steps = 5000
  elif arg != "shapesworld":
    raise ValueError(f"configs/sft.py: unknown arg {arg!r}; expected 'shapesworld' or one of "
                     f"{common.training_args()}")
  return c
