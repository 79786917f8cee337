"""The paper's comparisons on ShapesWorld, every arm from one base model (main.py runs it).

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

Arms take their own settings after a colon (`vanilla:beta=2500:steps=50`; keys in `SETTINGS`),
so tuned and untuned arms, and ablations, run side by side in one call.

Workdir (each stage is skipped when its output exists, so a rerun resumes):
  pairs_<mode>_<hash>/             pairs, named by the settings that shape them; `labels_*` are
                                   the labeled subsets, named by the labeling settings
  runs/<arm>/<hash>/seed<k>/       train/, train_history.json, and train.json (written last: the
                                   run's completion mark, with its full settings and the code
                                   version); <hash> digests those settings, so a run whose
                                   settings differ is never reused: it gets its own folder
    eval_<hash>/, eval_<hash>.json the final (and early) checkpoint's held-out scores under one
                                   evaluation seed, per prompt too (one folder a seed)
  appendix_b/                      the loss-difference maps (appendix_b.py)
  results.json                     everything the report shows
The Markdown report goes to `config.experiment.results` (report.py; empty: report.md in the
workdir), with `results.json` and the Appendix B figure beside it. On several processes every
stage runs on all of them (training and pair generation split their work) and process 0 writes
the records.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import time
from typing import Optional

import ml_collections
from absl import logging

from densedpo_jax import distributed
from densedpo_jax.tasks import evaluate, pairs
from densedpo_jax.training import train
from projects.shapesworld_paper import appendix_b, report, tradeoff
from densedpo_jax.data import arrayrecord_io, summary
from densedpo_jax.labeling import task as label_task
from densedpo_jax.shapesworld import judge
from densedpo_jax.tasks.arm import video_data
from densedpo_jax.training.builders import with_overrides


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

# Per-arm settings, `name:key=value:...` in `config.experiment.arms`: key -> (config key, parser,
# title). `eta=0.2-0.5` is the guided eta range; `fps` the pairs' frames per segment.
SETTINGS = {
    "beta": ("dpo.beta", float, "beta {}"),
    "steps": ("total_steps", int, "{} steps"),
    "lr": ("optim.lr", float, "lr {}"),
    "tie": ("label.tie_margin", float, "tie margin {}"),
    "eta": ("pairs.eta_range", lambda v: tuple(float(x) for x in v.split("-")), "eta {}"),
    "fps": ("pairs.frames_per_segment", int, "{} frames a segment"),
    "wins": ("label.keep_wins", str, "only {} members' segment wins"),
    # Objective variants that may keep the base model's motion: DPO-Positive's hinge on a
    # winner's error, a flow-matching term on the guided pairs' ground truth or on the winner
    # (RPO), summed units.
    "pos": ("dpo.positive_lambda", float, "DPO-Positive lambda {}"),
    "gt": ("dpo.gt_lambda", float, "ground-truth flow term lambda {}"),
    "rpo": ("dpo.winner_lambda", float, "winner flow term lambda {}"),
    "reduce": ("dpo.pair_reduction", str, "pair reduction {}"),
}
# Settings that need others: a ground-truth term needs pairs that store their ground truth.
IMPLIES = {"gt": (("pairs.store_gt", True),)}


@dataclasses.dataclass(frozen=True)
class ArmSpec:
  """An arm of `ARMS` with its own settings: `key` ('vanilla:beta=2500') names it in results."""
  key: str
  name: str
  overrides: tuple[tuple[str, object], ...] = ()  # (config key, value)

  @property
  def arm(self) -> Arm:
    return ARMS[self.name]

  @property
  def title(self) -> str:
    extra = [SETTINGS[k][2].format(v) for k, v in _pairs(self.key)]
    return self.arm.title + (f" ({', '.join(extra)})" if extra else "")


def _pairs(key: str) -> list[tuple[str, str]]:
  out = []
  for item in key.split(":")[1:]:
    k, sep, v = item.partition("=")
    if not sep or k not in SETTINGS:
      raise ValueError(f"config.experiment.arms: {key!r}: {item!r} is not key=value with a key "
                       f"of {sorted(SETTINGS)}")
    out.append((k, v))
  return out


def parse_arms(spec: str) -> list[ArmSpec]:
  """`'pretrained,dense,vanilla:beta=2500:steps=50'` -> ArmSpecs (unknown names or keys raise)."""
  keys = [s.strip() for s in spec.split(",") if s.strip()]
  unknown = [k for k in keys if k.split(":")[0] not in ARMS]
  if unknown or not keys:
    raise ValueError(f"config.experiment.arms={spec!r}: unknown {unknown}; expected a comma "
                     f"list of {list(ARMS)}, each with optional :key=value settings")
  if len(set(keys)) != len(keys):
    raise ValueError(f"config.experiment.arms={spec!r} names an arm twice")
  arms = []
  for key in keys:
    try:
      overrides = tuple((SETTINGS[k][0], SETTINGS[k][1](v)) for k, v in _pairs(key))
      overrides += tuple(kv for k, _ in _pairs(key) for kv in IMPLIES.get(k, ()))
    except ValueError as e:
      raise ValueError(f"config.experiment.arms: {key!r}: {e}") from e
    arms.append(ArmSpec(key, key.split(":")[0], overrides))
  return arms


def num_labeled(arm: Arm, n: int) -> int:
  return max(1, round(arm.budget * n))


def digest(settings: dict) -> str:
  """A short stable hash of JSON-able `settings`: names the folder of what they produce."""
  return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def code_version() -> str:
  """`git describe --always --dirty` of this checkout ('unknown' outside one)."""
  try:
    out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                         cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True,
                         text=True, timeout=30, check=True)
    return out.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def pair_set(config, workdir: str, mode: str, num_pairs: int) -> str:
  """Generates (once) `num_pairs` pairs of `mode` from the base model; returns their folder,
  named by the settings that shape the pairs (a set with at least `num_pairs` is reused)."""
  out_dir = os.path.join(workdir, f"pairs_{mode}_{digest(pair_settings(config, mode))}")
  side = arrayrecord_io.sidecar_path(out_dir, "pairs")
  if not (distributed.path(side).exists()
          and arrayrecord_io.read_sidecar(out_dir, "pairs")["num_records"] >= num_pairs):
    pairs.main(with_overrides(config, **{
        "pairs.mode": mode, "pairs.num_pairs": num_pairs, "pairs.out_dir": out_dir,
        "pairs.name": "pairs"}, **video_data(config, config.videos.split)))
  return out_dir


def label_set(config, workdir: str, arm: Arm, num_pairs: int) -> dict:
  """Labels the first `budget * N` pairs of the arm's pair set (once); returns where and stats."""
  n = config.experiment.labeled_pairs
  pair_dir = pair_set(config, workdir, arm.pairs, num_pairs)
  count = num_labeled(arm, n)
  name = f"labels_{arm.labeler}_n{count}_{digest(label_settings(config, arm))}"
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


# Settings added after runs were recorded: left out of names at these values, so that those
# runs keep their folders.
_LATER_DEFAULTS = {"label.keep_wins": "all"}
# Keys that do not change what a run learns (paths derive from the settings that are kept).
_NOT_SETTINGS = ("task", "experiment", "evaluate", "videos.split_eval", "data.path", "data.name",
                 "label.in_dir", "label.in_name", "label.out_dir", "label.out_name",
                 "label.num_previews", "pairs.out_dir", "pairs.name", "pairs.num_pairs",
                 "pairs.pairs_per_part", "pairs.batch_size", "log_every", "async_checkpointing",
                 "profile", "sample", "checkpoint_every", "keep_checkpoints", "decoder")


def _settings(node: dict, prefix: str = "", skip: tuple = _NOT_SETTINGS) -> dict:
  """`node` flattened to dotted keys (`prefix` + key), without `skip` keys and without settings
  at their `_LATER_DEFAULTS` value; tuples become lists (as JSON has them)."""
  flat = {}
  for k, v in node.items():
    key = f"{prefix}{k}"
    if key in skip or _LATER_DEFAULTS.get(key, object()) == v:
      continue
    if isinstance(v, dict):
      flat.update(_settings(v, key + ".", skip))
    else:
      flat[key] = list(v) if isinstance(v, tuple) else v
  return flat


def _shallow(node: dict, prefix: str, skip: tuple = _NOT_SETTINGS) -> dict:
  """`node`'s own keys (nested ones kept whole) by the same rule as `_settings`."""
  return {k: v for k, v in node.items()
          if f"{prefix}{k}" not in skip and _LATER_DEFAULTS.get(f"{prefix}{k}", object()) != v}


def pair_settings(config, mode: str) -> dict:
  """What shapes a pair set (its folder name): `config.pairs` but paths and batching."""
  spec = _shallow(config.pairs.to_dict(), "pairs.")
  spec.update(mode=mode, seed=config.seed, init_from=config.init_from, videos=config.videos.path)
  if mode == "vanilla":
    spec.pop("eta_range")
  return spec


def label_settings(config, arm: Arm) -> dict:
  """What shapes a label set (its name): `config.label` but paths, previews and the budget."""
  skip = _NOT_SETTINGS + ("label.max_pairs",)
  spec = _shallow(config.label.to_dict(), "label.", skip)
  spec.update(labeler=arm.labeler, flip_prob=arm.flip_prob, judge=judge.VERSION)
  return spec


def run_settings(config, arm: Arm) -> dict:
  """Everything a trained arm depends on: the whole config but `_NOT_SETTINGS` (plus the arm)."""
  # The judge's version labels the pairs, so it shapes what a trained arm learns.
  flat = dict(_settings(config.to_dict()), arm=dataclasses.asdict(arm), judge=judge.VERSION)
  if arm.loss is None:  # The base model: only what it is.
    flat = {"init_from": config.init_from, "arm": flat["arm"]}
  return json.loads(json.dumps(flat))


def eval_settings(config, seed: int, early: int) -> dict:
  spec = _shallow(config.evaluate.to_dict(), "evaluate.",
                  ("evaluate.models", "evaluate.preview_prompts", "evaluate.batch_size"))
  return dict(spec, seed=seed, split=config.videos.split_eval, videos=config.videos.path,
              early_step=early, judge=judge.VERSION)


def _read(path: str) -> Optional[dict]:
  return distributed.read_json(path) if distributed.path(path).exists() else None


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


def _write(path: str, record: dict) -> dict:
  if distributed.is_main():
    distributed.write_json(path, record)
  distributed.barrier(f"experiment: {path}")
  return record


def arm_config(config, spec: ArmSpec):
  return with_overrides(config, **dict(spec.overrides))


def train_arm(config, workdir: str, spec: ArmSpec, seed: int, pair_counts: dict) -> dict:
  """Trains one arm at one seed (once): its folder is named by its settings, so a run with other
  settings is never reused; returns the training record (`<run>/train.json`)."""
  arm = spec.arm
  config = arm_config(config, spec)  # Its pairs and labels use config.seed: shared by all seeds.
  settings = run_settings(with_overrides(config, seed=seed), arm)
  run_dir = os.path.join(workdir, "runs", spec.key.replace(":", "_").replace("=", ""),
                         digest({k: v for k, v in settings.items() if k != "seed"}),
                         "pretrained" if arm.loss is None else f"seed{seed}")
  done = os.path.join(run_dir, "train.json")
  record = _read(done)
  if record is not None:
    return record
  start = time.time()
  record = {"arm": spec.key, "seed": seed, "dir": run_dir, "labels": None, "train": {},
            "settings": settings, "code": code_version(), "model": config.init_from}
  if arm.loss is not None:
    if arm.pairs is None:  # SFT: flow matching on the ground-truth training videos.
      data = video_data(config, config.videos.split)
    else:
      labels = label_set(config, workdir, arm, pair_counts[arm.pairs])
      record["labels"] = labels
      data = {"data.kind": "pairs", "data.path": labels["path"], "data.name": labels["name"]}
    train_dir = os.path.join(run_dir, "train")
    print(f"experiment: {spec.key} seed {seed}: {arm.loss}, {config.total_steps} steps -> "
          f"{train_dir}")
    record["train"] = _train(
        with_overrides(config, **{"task": "train", "loss": arm.loss, "seed": seed}, **data),
        train_dir, os.path.join(run_dir, "train_history.json"))
    record["model"] = train_dir
  record["seconds"] = time.time() - start
  return _write(done, record)


def evaluate_arm(config, spec: ArmSpec, trained: dict, eval_seed: int) -> dict:
  """Held-out scores of a trained run (and its early checkpoint) with the evaluation noise of
  `eval_seed` (once); returns `{'final': metrics, 'early': metrics or None}`."""
  early = config.experiment.early_step
  steps = dict(spec.overrides).get("total_steps", config.total_steps)
  early = early if early and trained["train"] and early < steps else 0
  settings = eval_settings(config, eval_seed, early)
  out_dir = os.path.join(trained["dir"], f"eval_{digest(settings)}")
  done = out_dir + ".json"
  record = _read(done)
  if record is not None:
    return record
  models = f"final={trained['model']}"
  if early:
    models += f",early={os.path.join(trained['model'], 'checkpoints', str(early))}"
  eval_config = with_overrides(config, **video_data(config, config.videos.split_eval),
                               **{"evaluate.models": models, "evaluate.seed": eval_seed})
  start = time.time()
  results = evaluate.main(eval_config, out_dir)
  return _write(done, {"settings": settings, "code": code_version(), "final": results["final"],
                       "early": results.get("early"), "seconds": time.time() - start})


def run_arm(config, workdir: str, spec: ArmSpec, seed: int, pair_counts: dict) -> dict:
  """Trains and evaluates one arm at one seed under every evaluation seed; returns its record."""
  trained = train_arm(config, workdir, spec, seed, pair_counts)
  evals = {str(s): evaluate_arm(config, spec, trained, int(s))
           for s in config.experiment.eval_seeds}
  return dict(trained, title=spec.title,
              eval={s: e["final"] for s, e in evals.items()},
              eval_early={s: e["early"] for s, e in evals.items() if e["early"]} or None,
              eval_code=sorted({e["code"] for e in evals.values()}),
              seconds=trained.get("seconds", 0.0) + sum(e["seconds"] for e in evals.values()))


def pair_counts(arms: list[ArmSpec], n: int) -> dict:
  """Pairs each pair set must hold: the largest labeling budget among the arms that use it."""
  counts = {}
  for spec in arms:
    if spec.arm.pairs:
      key = _pair_key(spec)
      counts[key] = max(counts.get(key, 0), round(3 * n if spec.arm.budget > 1 else n))
  return counts


def _pair_key(spec: ArmSpec):
  return (spec.arm.pairs,) + tuple(kv for kv in spec.overrides if kv[0].startswith("pairs."))


def check_early_step(config, arms: list[ArmSpec]) -> None:
  early, every = config.experiment.early_step, config.checkpoint_every
  for spec in arms:
    steps = dict(spec.overrides).get("total_steps", config.total_steps)
    if early and early < steps and (early % every or (steps - early) // every
                                    >= config.keep_checkpoints):
      raise ValueError(f"config.experiment.early_step={early}: no checkpoint of that step "
                       f"survives in {spec.key} (checkpoint_every={every}, keep_checkpoints="
                       f"{config.keep_checkpoints}, total_steps={steps}); pick a kept multiple "
                       "of checkpoint_every or 0")


def main(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every arm of `config.experiment.arms` at every seed, Appendix B, then the report."""
  spec = config.experiment
  if not config.init_from:
    raise ValueError("config.init_from is empty: the experiment needs a base model")
  arms = parse_arms(spec.arms)
  seeds = [int(s) for s in spec.seeds]
  if not seeds or not spec.eval_seeds:
    raise ValueError("config.experiment.seeds and .eval_seeds must each hold at least one seed")
  check_early_step(config, arms)
  counts = pair_counts(arms, spec.labeled_pairs)
  start = time.time()
  runs = []
  for arm in arms:
    for seed in (seeds[:1] if arm.arm.loss is None else seeds):
      runs.append(run_arm(config, workdir, arm, seed,
                          {arm.arm.pairs: counts.get(_pair_key(arm))}))
      logging.info("experiment: %s seed %d done (%.0f s so far)", arm.key, seed,
                   time.time() - start)
  bias = {}  # Motion bias of whole-video labels of each default pair set used, before training.
  for mode in sorted({a.arm.pairs for a in arms if a.arm.pairs and _pair_key(a) == (a.arm.pairs,)},
                     reverse=True):
    count = counts[(mode,)]
    bias[mode] = label_set(config, workdir,
                           Arm("flow_dpo", mode, "global", count / spec.labeled_pairs), count)
  appendix = (appendix_b.run(config, os.path.join(workdir, "appendix_b"))
              if spec.appendix_b.num_videos else None)
  results = {"arms": {a.key: a.title for a in arms}, "runs": runs, "label_bias": bias,
             "appendix_b": appendix, "seconds": time.time() - start,
             "run_seconds": sum(r["seconds"] for r in runs), "code": code_version(),
             "config": {"labeled_pairs": spec.labeled_pairs, "seeds": seeds,
                        "eval_seeds": [int(s) for s in spec.eval_seeds],
                        "early_step": spec.early_step,
                        "total_steps": config.total_steps, "batch_size": config.data.batch_size,
                        "lr": config.optim.lr, "beta": config.dpo.beta,
                        "lora_rank": config.lora.rank, "eta_range": list(config.pairs.eta_range),
                        "tie_margin": config.label.tie_margin,
                        "eval_split": config.videos.split_eval,
                        "eval_prompts_seeds": [config.evaluate.max_prompts,
                                               config.evaluate.seeds_per_prompt]}}
  if distributed.is_main():
    write_report(results, workdir, spec.results, appendix["figure"] if appendix else None)
  distributed.barrier("experiment: report")
  return results


def write_report(results: dict, workdir: str, report_path: str,
                 appendix_figure: str | None) -> None:
  """`results.json` in `workdir` and beside the Markdown `report_path` (default: report.md in
  `workdir`), with the Appendix B figure."""
  report_path = report_path or os.path.join(workdir, "report.md")
  stem = os.path.splitext(report_path)[0]
  for path in (distributed.path(workdir) / "results.json", f"{stem}.json"):
    distributed.write_json(path, results)
  figure = distributed.path(f"{stem}_appendix_b.png")
  if appendix_figure:
    figure.write_bytes(distributed.path(appendix_figure).read_bytes())
  by_arm = report.runs_by_arm(results["runs"])
  tradeoff_figure = ""
  if "pretrained" in by_arm and len(by_arm) > 1:  # The trade-off picture, beside the report.
    tradeoff_figure = f"{stem}_tradeoff.png"
    tradeoff.save_figure(tradeoff_figure, tradeoff.tradeoff_points(
        results["arms"], by_arm, [str(s) for s in results["config"]["eval_seeds"]]))
  text = report.render(results, figure=figure.name,
                       tradeoff_figure=os.path.basename(tradeoff_figure))
  distributed.write_text(report_path, text)
  print(text)
