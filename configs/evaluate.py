"""Evaluation (task=evaluate) on held-out ShapesWorld prompts, scored by the judge.

    python -m densedpo_jax.main --config=configs/evaluate.py \
        --config.evaluate.models=base=assets/shapesworld_base,dense=workdirs/dense/train

`:wan1.3b` / `:wan14b`: samples of each model for the prompts of encoded videos (data/videos),
decoded to MP4 (for VBench or people), scored by optical-flow motion and temporal metrics and
compared to the first model with intervals over prompts (judge video); only paths to set:

    python -m densedpo_jax.main --config=configs/evaluate.py:wan1.3b --config.decoder.weights=$WAN \
        --config.evaluate.models=base=$WAN/transformer,dense=workdirs/dense_wan1.3b

The other models' args (wan2.1-i2v-14b, wan2.2-ti2v-5b, wan2.2-t2v-a14b, wan2.2-i2v-a14b) work
the same; an adapted A14B model is named by its two runs, `dense=HIGH_RUN+LOW_RUN`.
"""
import dataclasses

import ml_collections

from configs import common
from densedpo_jax.labeling.vlm import VLMSettings


def get_config(arg=None):
  if arg is not None and (arg not in common.SCALED_MODELS or arg == "paper"):
    raise ValueError(f"configs/evaluate.py: unknown arg {arg!r}; expected none or a model of "
                     f"{sorted(set(common.SCALED_MODELS) - {'paper'})}")
  c = common.base()
  c.task = "evaluate"
  c.data.kind = "shapesworld"
  c.data.path = "workdirs/tfds"
  c.data.split = "heldout"
  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.models = "base=workdirs/pretrain"
  # shapesworld | video (optical-flow motion and temporal metrics of decoded pixels, any model;
  # the [metrics] extra) | none (export samples for external tools)
  c.evaluate.judge = "shapesworld"
  # 'vbench': also write each model's samples as VBench's custom input, eval/vbench/<model>/.
  c.evaluate.export = ""
  c.evaluate.max_prompts = 64
  c.evaluate.seeds_per_prompt = 4
  c.evaluate.num_steps = 32
  c.evaluate.cfg_scale = 1.0
  c.evaluate.batch_size = 32
  c.evaluate.seed = 1234
  c.evaluate.frames_per_segment = 4
  c.evaluate.preview_prompts = 8
  # A VLM judges every model against the first (tasks/vlm_judge.py): every VLMSettings field
  # (labeling's client: cache '' = eval/vlm_cache.sqlite, budgets, concurrency), a dry run that
  # only counts the calls, and the cost estimate (765 tokens: a 512-px image at OpenAI's high
  # detail; set your server's).
  c.evaluate.vlm = ml_collections.ConfigDict(dataclasses.asdict(VLMSettings()))
  c.evaluate.vlm.update(enabled=False, dry_run=False, tokens_per_image=765,
                        usd_per_million_tokens=0.0)
  if arg:
    common.accelerator_model(c, arg)
    common.real_videos(c)
    c.evaluate.update(judge="video", num_steps=50, batch_size=4, frames_per_segment=16,
                      models=f"base=weights/{arg}")
  return c
