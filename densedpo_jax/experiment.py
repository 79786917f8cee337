"""task=experiment: the paper's comparisons on ShapesWorld, every arm from one base model.

Every trained arm starts from `config.init_from` and runs the same steps at the same batch
size (`config.total_steps`, `config.data.batch_size`); every model is sampled on the same
held-out prompts with the same noise, so differences between arms are paired. N is
`config.experiment.labeled_pairs`:

  pretrained     the base model, no training
  sft            flow matching with LoRA on ground-truth training videos
  vanilla        Flow-DPO, vanilla pairs (Algo. 1), whole-video labels, 3N labeled pairs
  structural     Flow-DPO, guided pairs (Algo. 2), whole-video labels, 3N
  dense          DenseDPO, guided pairs, segment labels, N
  dense_flip40   DenseDPO with 40% of the non-tie segment labels flipped, N       (Tab. 4)
  dense_half     DenseDPO with half the labels, N / 2                              (Tab. 4)
  structural_mv  Flow-DPO on guided pairs whose whole-video label is the majority vote
                 of their segment labels, 3N                                       (Tab. 4)

Workdir (each stage is skipped when its output exists, so a rerun resumes):
  pairs_guided/, pairs_vanilla/   3N pairs each; `labels_*` are the labeled subsets
  runs/<arm>/seed<k>/             train/, eval/, train_history.json and run.json (written
                                  last: the run's completion mark, with the settings it used)
  appendix_b/                     the loss-difference maps (appendix_b.py)
  results.json                    everything the report shows
The Markdown report goes to `config.experiment.results` (experiment_report.py), with
`results.json` and the Appendix B figure beside it. On several processes every stage runs on
all of them (training and pair generation split their work) and process 0 writes the records.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional

import ml_collections
from absl import logging

from densedpo_jax import appendix_b, distributed, evaluate, experiment_report, pairs, train
from densedpo_jax.data import summary
from densedpo_jax.labeling import task as label_task
from densedpo_jax.pipeline import video_data, with_overrides


@dataclasses.dataclass(frozen=True)
class Arm:
  """One arm: `loss` None means no training; `pairs` None trains on ground-truth videos."""
  loss: Optional[str]
  pairs: Optional[str] = None  # 'guided' | 'vanilla'
  labeler: str = "segment"     # 'segment' | 'global'
  budget: float = 1.0          # labeled pairs, in units of N
  flip_prob: float = 0.0
  title: str = ""


ARMS = {
    "pretrained": Arm(None, title="Pretrained"),
    "sft": Arm("flow_matching", title="SFT"),
    "vanilla": Arm("flow_dpo", "vanilla", "global", 3.0, title="VanillaDPO"),
    "structural": Arm("flow_dpo", "guided", "global", 3.0, title="StructuralDPO"),
    "dense": Arm("dense_dpo", "guided", "segment", 1.0, title="DenseDPO"),
    "dense_flip40": Arm("dense_dpo", "guided", "segment", 1.0, 0.4, title="DenseDPO, 40% flipped"),
    "dense_half": Arm("dense_dpo", "guided", "segment", 0.5, title="DenseDPO, 0.5x labels"),
    "structural_mv": Arm("flow_dpo", "guided", "segment", 3.0,
                         title="StructuralDPO, majority-voted segment labels"),
}


def parse_arms(spec: str) -> list[str]:
  names = [s.strip() for s in spec.split(",") if s.strip()]
  unknown = [n for n in names if n not in ARMS]
  if unknown or not names:
    raise ValueError(f"config.experiment.arms={spec!r}: unknown {unknown}; expected a comma "
                     f"list of {list(ARMS)}")
  return names


def num_labeled(arm: Arm, n: int) -> int:
  return max(1, round(arm.budget * n))


def pair_set(config, workdir: str, mode: str, num_pairs: int) -> str:
  """Generates (once) `num_pairs` pairs of `mode` from the base model; returns their folder."""
  out_dir = os.path.join(workdir, f"pairs_{mode}")
  pairs.main(with_overrides(config, **{
      "pairs.mode": mode, "pairs.num_pairs": num_pairs, "pairs.out_dir": out_dir,
      "pairs.name": "pairs"}, **video_data(config, config.videos.split)))
  return out_dir


def label_set(config, workdir: str, arm: Arm) -> dict:
  """Labels the first `budget * N` pairs of the arm's pair set (once); returns where and stats."""
  n = config.experiment.labeled_pairs
  pair_dir = pair_set(config, workdir, arm.pairs, round(3 * n))
  count = num_labeled(arm, n)
  name = f"labels_{arm.labeler}_n{count}" + (f"_flip{round(100 * arm.flip_prob)}"
                                             if arm.flip_prob else "")
  stats = label_task.label_pairs(with_overrides(config, **{
      "label.labeler": arm.labeler, "label.flip_prob": arm.flip_prob, "label.max_pairs": count,
      "label.in_dir": pair_dir, "label.in_name": "pairs", "label.out_dir": pair_dir,
      "label.out_name": name}).label)
  summ = summary.summarize(pair_dir, name, config.data.min_nontie_frac)
  kept = (summ["dense_kept_share"] if arm.loss == "dense_dpo"
          else 1.0 - summ["global_label_share"]["0"])
  return {"path": pair_dir, "name": name, "labeled": count, "kept": round(kept * count),
          "motion_bias": stats.get("motion_bias"), "num_nontie_global": stats.get("num_nontie_global"),
          "mixed_winner_share": summ["mixed_winner_share"],
          "segment_tie_share": summ["segment_label_share"]["0"]}


def _eval(config, run_dir: str, models: str) -> dict:
  """Evaluates `models` ('name=path,...') on the held-out prompts into `run_dir/eval`."""
  eval_config = with_overrides(config, **video_data(config, config.videos.split_eval),
                               **{"evaluate.models": models})
  return evaluate.main(eval_config, run_dir)


def run_settings(config) -> dict:
  """What a finished run depends on besides its arm and seed: a cached run must match it."""
  return {"init_from": config.init_from, "total_steps": config.total_steps,
          "batch_size": config.data.batch_size, "lr": config.optim.lr, "beta": config.dpo.beta,
          "lora_rank": config.lora.rank, "labeled_pairs": config.experiment.labeled_pairs,
          "tie_margin": config.label.tie_margin, "eta_range": list(config.pairs.eta_range),
          "evaluate": [config.evaluate.max_prompts, config.evaluate.seeds_per_prompt,
                       config.evaluate.num_steps, config.evaluate.seed, config.videos.split_eval]}


def _cached(done: str, settings: dict) -> Optional[dict]:
  if not distributed.path(done).exists():
    return None
  record = distributed.read_json(done)
  old = record.get("settings")
  if old is None:
    logging.warning("%s records no settings (an older run): reusing it as it is.", done)
  elif old != json.loads(json.dumps(settings)):
    diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    raise ValueError(f"{done} was run with other settings ({', '.join(diff)}: "
                     f"{ {k: old.get(k) for k in diff} }, now { {k: settings.get(k) for k in diff} }). "
                     "Use another workdir, or delete that run to redo it.")
  return record


def _train(config, train_dir: str, history_path: str) -> dict:
  """Trains (resuming) and returns the whole logged history; raises unless it reached the end."""
  history = {}
  if distributed.path(history_path).exists():
    history = distributed.read_json(history_path)
  history.update({str(k): v for k, v in train.train_and_evaluate(config, train_dir).items()})
  if distributed.is_main():
    distributed.write_json(history_path, history)
  last = max(map(int, history), default=0)
  if last != config.total_steps:
    raise RuntimeError(f"{train_dir}: training stopped at step {last} of {config.total_steps} "
                       "(interrupted?); rerun the experiment to resume it.")
  return history


def run_arm(config, workdir: str, name: str, seed: int) -> dict:
  """Trains and evaluates one arm at one training seed; returns its record (cached on disk)."""
  arm = ARMS[name]
  run_dir = os.path.join(workdir, "runs", name, "pretrained" if arm.loss is None else f"seed{seed}")
  done = os.path.join(run_dir, "run.json")
  settings = run_settings(config)
  record = _cached(done, settings)
  if record is not None:
    return record
  start = time.time()
  record = {"arm": name, "seed": seed, "labels": None, "train": {}, "settings": settings}
  if arm.loss is None:
    record["eval"] = _eval(config, run_dir, f"{name}={config.init_from}")[name]
  else:
    if arm.pairs is None:  # SFT: flow matching on the ground-truth training videos.
      data = video_data(config, config.videos.split)
    else:
      labels = label_set(config, workdir, arm)
      record["labels"] = labels
      data = {"data.kind": "pairs", "data.path": labels["path"], "data.name": labels["name"]}
    train_dir = os.path.join(run_dir, "train")
    print(f"experiment: {name} seed {seed}: {arm.loss}, {config.total_steps} steps -> {train_dir}")
    record["train"] = _train(
        with_overrides(config, **{"task": "train", "loss": arm.loss, "seed": seed}, **data),
        train_dir, os.path.join(run_dir, "train_history.json"))
    models = f"{name}={train_dir}"
    early = config.experiment.early_step
    if early and seed == config.experiment.seeds[0] and early < config.total_steps:
      models += f",{name}@{early}={os.path.join(train_dir, 'checkpoints', str(early))}"
    results = _eval(config, run_dir, models)
    record["eval"] = results[name]
    record["eval_early"] = results.get(f"{name}@{early}")
  record["seconds"] = time.time() - start
  if distributed.is_main():
    distributed.write_json(done, record)
  distributed.barrier(f"experiment: {done}")
  return record


def main(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every arm of `config.experiment.arms` at every seed, Appendix B, then the report."""
  spec = config.experiment
  if not config.init_from:
    raise ValueError("config.init_from is empty: the experiment needs a base model")
  names = parse_arms(spec.arms)
  seeds = [int(s) for s in spec.seeds]
  if not seeds:
    raise ValueError("config.experiment.seeds is empty: expected at least one training seed")
  early, every = spec.early_step, config.checkpoint_every
  if early and early < config.total_steps and (
      early % every or (config.total_steps - early) // every >= config.keep_checkpoints):
    raise ValueError(f"config.experiment.early_step={early}: no checkpoint of that step survives "
                     f"(checkpoint_every={every}, keep_checkpoints={config.keep_checkpoints}, "
                     f"total_steps={config.total_steps}); pick a kept multiple of checkpoint_every "
                     "or 0")
  start = time.time()
  runs = []
  for name in names:
    for seed in (seeds[:1] if ARMS[name].loss is None else seeds):
      runs.append(run_arm(config, workdir, name, seed))
      logging.info("experiment: %s seed %d done (%.0f s so far)", name, seed, time.time() - start)
  bias = {}  # Motion bias of whole-video labels of each pair set used, before any training.
  for mode in sorted({ARMS[n].pairs for n in names} - {None}, reverse=True):
    bias[mode] = label_set(config, workdir, Arm("flow_dpo", mode, "global", 3.0))
  appendix = (appendix_b.run(config, os.path.join(workdir, "appendix_b"))
              if spec.appendix_b.num_videos else None)
  results = {"arms": {n: ARMS[n].title for n in names}, "runs": runs, "label_bias": bias,
             "appendix_b": appendix, "seconds": time.time() - start,
             "run_seconds": sum(r["seconds"] for r in runs),
             "config": {"labeled_pairs": spec.labeled_pairs, "seeds": seeds,
                        "total_steps": config.total_steps, "batch_size": config.data.batch_size,
                        "lr": config.optim.lr, "beta": config.dpo.beta,
                        "lora_rank": config.lora.rank, "eta_range": list(config.pairs.eta_range),
                        "tie_margin": config.label.tie_margin,
                        "eval_prompts_seeds": [config.evaluate.max_prompts,
                                               config.evaluate.seeds_per_prompt]}}
  if distributed.is_main():
    write_report(results, workdir, spec.results, appendix["figure"] if appendix else None)
  distributed.barrier("experiment: report")
  return results


def write_report(results: dict, workdir: str, report: str, appendix_figure: str | None) -> None:
  """`results.json` in `workdir` and beside the Markdown `report`, with the Appendix B figure."""
  stem = os.path.splitext(report)[0]
  for path in (distributed.path(workdir) / "results.json", f"{stem}.json"):
    distributed.write_json(path, results)
  figure = distributed.path(f"{stem}_appendix_b.png")
  if appendix_figure:
    figure.write_bytes(distributed.path(appendix_figure).read_bytes())
  text = experiment_report.render(results, figure=figure.name)
  distributed.write_text(report, text)
  print(text)
