"""Preference-pair generation (task=pairs) with the pretrained base model.

  guided (default)  Algo. 2: SDEdit pairs from ShapesWorld ground truth, eta drawn per pair
  vanilla           Algo. 1: two independent full runs per prompt
  wan1.3b, wan14b   guided pairs of Wan 2.1 from encoded videos (data/videos), 1 s segments at
                    16 fps, decoded to MP4 for labeling; only paths to set:

    python -m densedpo_jax.main --config=configs/pairs.py:wan1.3b --config.init_from=$WAN/transformer \
        --config.decoder.weights=$WAN

  wan2.1-i2v-14b, wan2.2-ti2v-5b, wan2.2-t2v-a14b, wan2.2-i2v-a14b   the same for those models
                    (init_from: the pipeline folder; both A14B experts sample; image-to-video
                    records carry their first frame: encode with --condition=first_frame)
"""
import ml_collections

from configs import common


def get_config(arg=None):
  model = arg if arg in common.SCALED_MODELS and arg != "paper" else None
  mode = "guided" if model else (arg or "guided")
  if mode not in ("guided", "vanilla"):
    raise ValueError(f"configs/pairs.py: unknown arg {arg!r}; expected 'guided', 'vanilla' or "
                     f"a model of {sorted(set(common.SCALED_MODELS) - {'paper'})}")
  c = common.base()
  c.task = "pairs"
  c.init_from = "workdirs/pretrain"
  c.data.kind = "shapesworld"
  c.data.path = "workdirs/tfds"
  c.data.split = "train"
  c.pairs = ml_collections.ConfigDict()
  c.pairs.mode = mode
  c.pairs.num_pairs = 1024
  c.pairs.pairs_per_part = 128  # Unit of resumption.
  c.pairs.batch_size = 32
  c.pairs.eta_range = (0.4, 0.7)  # Guided only; lo == hi fixes eta.
  c.pairs.num_steps = 32
  c.pairs.shift = 0.0  # SD3 time shift; 0 = none.
  c.pairs.cfg_scale = 1.0
  c.pairs.frames_per_segment = 4
  # Guided pairs also store their ground-truth latent (for dpo.gt_lambda; 1.5x the dataset).
  c.pairs.store_gt = False
  c.pairs.latent_dtype = "float32"
  c.pairs.out_dir = f"workdirs/pairs_{mode}"
  c.pairs.name = "pairs"
  if model:
    common.accelerator_model(c, model)
    common.real_videos(c)
    c.init_from = ""
    c.pairs.update(num_steps=50, frames_per_segment=24 if model == "wan2.2-ti2v-5b" else 16,
                   latent_dtype="bfloat16", out_dir="data", batch_size=8)  # 1 s segments.
  return c
