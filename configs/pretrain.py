"""Flow-matching pretraining of the base VideoDiT.

  shapesworld (default)  tiny DiT on ShapesWorld videos, on CPU (docs/shapesworld.md recipe:
                         lr 1e-3, batch 16, warmed-up EMA); an hour or more, resumable
  quick                  the same for 100 steps (a few minutes): a smoke run
"""
from configs import common


def get_config(arg=None):
  arg = arg or "shapesworld"
  c = common.base()
  c.loss = "flow_matching"
  c.lora.rank = 0
  c.ema_decay = 0.999
  c.data.kind = "shapesworld"
  c.data.path = "workdirs/tfds"  # Generated on first use (procedural; no download).
  c.data.batch_size = 16
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.total_steps = 6000
  c.log_every = 50
  c.checkpoint_every = 200
  c.sample.every = 400
  if arg == "quick":
    c.total_steps, c.log_every, c.checkpoint_every = 100, 10, 50
  elif arg != "shapesworld":
    raise ValueError(f"configs/pretrain.py: unknown arg {arg!r}; expected 'shapesworld' or 'quick'")
  return c
