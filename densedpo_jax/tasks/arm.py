"""task=pipeline: one preference-optimisation arm end to end, every stage cached in the workdir.

    <workdir>/pairs/     pairs from the base model (Algo. 1 or 2)       skipped when complete
    <workdir>/pairs/<labeler name>  the labeled pairs                   skipped when complete
    <workdir>/train/     LoRA DPO training (resumes from its checkpoints)
    <workdir>/eval/      base vs. tuned on held-out prompts: metrics.json, table.md, previews

With `config.data.path` set, the pairs and labels stages are skipped and training reads that
pair dataset (`config.data.name`) instead: the same job on a user's own labeled pairs.
"""
from __future__ import annotations

import os

import ml_collections
from absl import logging

from densedpo_jax.tasks import evaluate, pairs
from densedpo_jax.training import train
from densedpo_jax.training.builders import with_overrides
from densedpo_jax.labeling import task as label_task


def video_data(config: ml_collections.ConfigDict, split: str) -> dict[str, str]:
  """Dotted `data.*` overrides that point a job at `config.videos` (the video dataset), `split`."""
  return {"data.kind": config.videos.kind, "data.path": config.videos.path,
          "data.split": split, "data.name": config.videos.name}


def main(config: ml_collections.ConfigDict, workdir: str) -> dict:
  if not config.init_from:
    raise ValueError("config.init_from is empty: the pipeline needs a base model")
  if config.data.path:
    logging.info("Training on the given pairs %s/%s", config.data.path, config.data.name)
    data_path, data_name = config.data.path, config.data.name
  else:
    pairs_dir = os.path.join(workdir, "pairs")
    print(f"[1/4] pairs: {config.pairs.num_pairs} {config.pairs.mode} pairs -> {pairs_dir}")
    pairs.main(with_overrides(config, **{"pairs.out_dir": pairs_dir, "pairs.name": "pairs"},
                              **video_data(config, config.videos.split)))
    data_name = f"pairs_{config.label.labeler}"
    print(f"[2/4] labels: {config.label.labeler} oracle -> {pairs_dir}/{data_name}")
    label_task.label_pairs(with_overrides(config, **{
        "label.in_dir": pairs_dir, "label.in_name": "pairs", "label.out_dir": pairs_dir,
        "label.out_name": data_name}).label)
    data_path = pairs_dir
  train_dir = os.path.join(workdir, "train")
  print(f"[3/4] train: {config.loss}, {config.total_steps} steps -> {train_dir}")
  train.train_and_evaluate(with_overrides(config, **{"task": "train", "data.kind": "pairs",
                                             "data.path": data_path, "data.name": data_name}),
                           train_dir)
  print(f"[4/4] evaluate: base vs. {config.loss} on {config.videos.split_eval} prompts")
  eval_config = with_overrides(
      config, **video_data(config, config.videos.split_eval),
      **{"evaluate.models": f"base={config.init_from},{config.loss}={train_dir}"})
  return evaluate.main(eval_config, workdir)
