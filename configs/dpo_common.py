"""What the DPO jobs (vanilla, structural, dense) share."""
from configs import common


def dpo_config(loss: str, pairs: str, arg=None):
  arg = arg or "shapesworld"
  c = common.base()
  c.loss = loss
  c.init_from = "workdirs/pretrain"
  c.data.kind = "pairs"
  c.data.path = pairs
  c.data.name = "pairs"
  c.data.batch_size = 16
  c.lora.rank, c.lora.alpha = 16, 16.0
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 20
  c.total_steps = 200
  c.log_every = 10
  c.checkpoint_every = 50
  if arg == "paper":
    common.paper_scale(c)
  elif arg != "shapesworld":
    raise ValueError(f"unknown config arg {arg!r}; expected 'shapesworld' or 'paper'")
  return c
