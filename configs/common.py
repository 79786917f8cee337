"""Shared pieces of every job's config. Each job file's `get_config(arg)` starts from `base()`."""
import dataclasses

import ml_collections
from ml_collections import config_dict

from densedpo_jax.model import FAMILIES
from densedpo_jax.training.sharding import DEFAULT_RULES


def model_fields() -> ml_collections.ConfigDict:
  """`family`, `preset` and every field of every family's config as a typed placeholder (None =
  the preset's value), so any of them can be overridden on the command line
  (`--config.model.width=256`); a field the chosen family lacks is an error when the model is
  built (`builders.model_config`)."""
  fields = {}
  for cls, _ in FAMILIES.values():
    defaults = cls()
    fields.update({f.name: config_dict.placeholder(type(getattr(defaults, f.name)))
                   for f in dataclasses.fields(cls) if f.name != "lora"})
  return ml_collections.ConfigDict({"family": "dit", "preset": "tiny", **fields})


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "train"  # train | pairs | label | evaluate
  c.loss = "dense_dpo"  # flow_matching | flow_dpo | dense_dpo
  c.seed = 0
  c.total_steps = 100
  c.log_every = 10
  c.checkpoint_every = 50
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.profile = False
  # Workdir (or checkpoint step folder) whose `params` item is the base model (SFT, DPO), or the
  # weights to continue from with a fresh optimiser (pretraining, when the workdir has no checkpoint).
  c.init_from = ""
  c.ema_decay = 0.0  # > 0 keeps a warmed-up EMA of the trainable tree.

  c.model = model_fields()
  c.model.dtype = "float32"
  c.lora = ml_collections.ConfigDict({"rank": 16, "alpha": 16.0, "targets": [
      "self_q", "self_k", "self_v", "self_out", "cross_q", "cross_k", "cross_v", "cross_out",
      "mlp_in", "mlp_out"]})

  c.data = ml_collections.ConfigDict()
  c.data.kind = "pairs"  # pairs | videos | shapesworld
  c.data.path = ""
  c.data.name = "pairs"
  c.data.split = "train"
  c.data.batch_size = 16  # Global; pairs for DPO, videos for flow matching.
  c.data.read_threads = 2
  c.data.prefetch = 16
  c.data.min_nontie_frac = 0.2
  # Share of the dataset's records that may be unreadable (corrupt bytes, a truncated shard) and
  # are then skipped and counted; 0: the first one stops the run, naming its shard and record.
  c.data.max_unreadable_share = 0.0

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-4
  c.optim.init_lr = 0.0
  c.optim.warmup_steps = 10
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.grad_clip = 1.0
  c.optim.accum_steps = 1

  c.dpo = ml_collections.ConfigDict()
  c.dpo.beta = 500.0
  c.dpo.share_noise = True
  c.dpo.granularity = "frame"  # frame | segment
  # Objective variants (objectives/losses.py): DPO-Positive's per-unit penalty on a winner whose
  # error rises above the reference's (0: off), and a pair's units averaged or summed.
  c.dpo.positive_lambda = 0.0
  c.dpo.pair_reduction = "mean"  # mean | sum
  # Weight of a flow-matching term on the guided pairs' ground truth (pairs.store_gt); 0: off.
  c.dpo.gt_lambda = 0.0
  # Weight of a flow-matching term on each non-tie unit's preferred member (RPO); 0: off.
  c.dpo.winner_lambda = 0.0

  # Previews: every `every` steps (0: never) sample the first prompts of the first batch.
  c.sample = ml_collections.ConfigDict({"every": 0, "num_videos": 4, "num_steps": 32,
                                        "cfg_scale": 1.0, "seed": 0, "fps": 8.0})

  # Latents -> video files in task=pairs and task=evaluate (interop/decode_records.py): 'none',
  # 'pixels' (identity autoencoder: ShapesWorld), 'wan' (the Wan 2.1 VAE in `weights`, a diffusers
  # folder).
  c.decoder = ml_collections.ConfigDict({"kind": "none", "weights": "", "format": "mp4", "scale": 1})

  # Training noise levels; `range` truncates them (set from the expert's levels by `expert`).
  # With expert='both', `boundary` (set from the pipeline) splits the draws: the high-noise
  # expert's range gets `high_share` of them.
  c.t_sampler = ml_collections.ConfigDict({"kind": "logit_normal", "mean": 0.0, "std": 1.0,
                                           "range": (0.0, 1.0), "boundary": 0.0,
                                           "high_share": 0.5})
  # A two-expert (Wan 2.2 A14B) pipeline in init_from: adapt its 'high' or 'low' noise expert,
  # or 'both' in one run (each pair on the expert of its noise level; holds both bases).
  c.expert = ""

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)  # (data, fsdp, tensor); -1 = the remaining devices.
  c.mesh.dcn_shape = ()  # Multi-slice: slices per axis, e.g. (2, 1, 1).
  c.mesh.num_devices = 0  # 0 = all devices; else the first n (debugging, tests).
  c.mesh.rules = [(k, list(v) if isinstance(v, tuple) else v) for k, v in DEFAULT_RULES]
  return c


# Model presets the training-only config args name: `dense.py:paper`, `:wan1.3b`, `:wan14b`.
SCALED_MODELS = {"paper": ("dit", "paper"), "wan1.3b": ("wan", "wan2.1-t2v-1.3b"),
                 "wan14b": ("wan", "wan2.1-t2v-14b"),
                 **{name: ("wan", name) for name in ("wan2.1-i2v-14b", "wan2.2-ti2v-5b",
                                                     "wan2.2-t2v-a14b", "wan2.2-i2v-a14b")}}
FOURTEEN_B = ("wan14b", "wan2.1-i2v-14b", "wan2.2-t2v-a14b", "wan2.2-i2v-a14b")
TWO_EXPERTS = ("wan2.2-t2v-a14b", "wan2.2-i2v-a14b")  # Trained as ARG-high, ARG-low or ARG-both.
EXPERT_ARGS = ("high", "low", "both")


def split_expert(arg: str | None) -> tuple[str | None, str]:
  """`'wan2.2-t2v-a14b-low'` -> `('wan2.2-t2v-a14b', 'low')`; other args -> `(arg, '')`."""
  for expert in EXPERT_ARGS:
    if arg and arg.endswith(f"-{expert}") and arg[:-len(expert) - 1] in TWO_EXPERTS:
      return arg[:-len(expert) - 1], expert
  return arg, ""


def training_model(c: ml_collections.ConfigDict, arg: str) -> str:
  """The model of a training config's `arg` (`SCALED_MODELS`, A14B ones with `-high`, `-low` or
  `-both`), with `c.expert` set; an A14B arg without its expert is an error saying how to pick."""
  model, expert = split_expert(arg)
  if model in TWO_EXPERTS and not expert:
    raise ValueError(f"config arg :{arg} names two experts: use :{arg}-high or :{arg}-low (one "
                     f"a run), or :{arg}-both (both in one run)")
  c.expert = expert
  return model


def training_args() -> list[str]:
  """The model args a training config takes (A14B ones with their expert)."""
  return sorted([m for m in SCALED_MODELS if m not in TWO_EXPERTS]
                + [f"{m}-{e}" for m in TWO_EXPERTS for e in EXPERT_ARGS])


def accelerator_model(c: ml_collections.ConfigDict, model: str) -> ml_collections.ConfigDict:
  """The model `SCALED_MODELS[model]` as it runs on accelerators: bf16 compute, blocks scanned with
  full remat, cuDNN attention (blockwise, with a warning, where there is none); Wan models sample
  with 50 steps; the 14B base is kept in bf16. The shape comes from `init_from`'s weights."""
  c.model.family, c.model.preset = SCALED_MODELS[model]
  c.model.dtype = "bfloat16"
  # Remat only takes effect with scanned layers (without scan XLA schedules the recomputation
  # early and keeps everything: measured with python -m densedpo_jax.plan --compiled).
  c.model.scan_layers = True
  c.model.remat_policy = "full"
  c.model.attention_impl = "cudnn"  # GPU flash attention; 'splash' on TPU, 'blockwise' anywhere.
  if c.model.family == "wan":
    c.sample.num_steps = 50
  if model in FOURTEEN_B:
    c.model.param_dtype = "bfloat16"  # The frozen base; the LoRA adapter is trained in float32.
  return c


def real_videos(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A Wan model's pairs or evaluation on real videos: latent video records in (`data.path`,
  `data.name`), MP4s out through the Wan VAE (`decoder.weights`: the diffusers folder)."""
  c.data.kind, c.data.path, c.data.name = "videos", "data", "videos"
  c.decoder.kind = "wan"
  return c


def paper_scale(c: ml_collections.ConfigDict, model: str = "paper") -> ml_collections.ConfigDict:
  """The paper's DPO hyper-parameters (Appendix A.2): LoRA 128, batch 256, 1k steps, warm-up 250,
  bf16 compute, on the model `SCALED_MODELS[model]` (its weights from `--config.init_from`: a run,
  a converted params directory or a diffusers `transformer/` folder).

  Wan 2.1 14B needs its base sharded (FSDP, layers scanned, full remat; a float32 base is 57 GB)
  and its tokens split over a `sequence` mesh axis at 81 frames. The 1.3B model (5.7 GB) fits
  data-parallel with remat.
  """
  accelerator_model(c, model)
  # Planned for 8 x 80 GB (python -m densedpo_jax.plan; docs/scaling.md): pairs per device
  # and micro-step so that activations fit.
  c.optim.accum_steps = 64 if model in FOURTEEN_B else {"paper": 16, "wan1.3b": 16,
                                                        "wan2.2-ti2v-5b": 32}[model]
  if model in FOURTEEN_B:
    # FSDP over 4 devices x each video's 32,760 tokens over 2 (context parallelism): one pair a
    # micro-step on 8 GPUs; without the sequence axis one pair's activations do not fit 80 GB.
    c.mesh.shape = (1, 4, 1, 2)
  if c.get("expert") == "both":
    # Both A14B experts in one run hold two bases and, when a micro-batch's pairs fall on both
    # sides of the boundary, both experts' activations: planned for 8 x 141 GB (H200), tokens
    # over 4 devices; on 16 x 80 GB use mesh (1, 4, 1, 4) with accumulation 64.
    c.mesh.shape, c.optim.accum_steps = (1, 2, 1, 4), 128
  c.lora.rank, c.lora.alpha = 128, 128.0
  c.data.batch_size = 256
  c.total_steps = 1000
  c.optim.warmup_steps = 250
  c.optim.grad_clip = 1.0
  c.checkpoint_every = 100
  c.log_every = 10
  return c
