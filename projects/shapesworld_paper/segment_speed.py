"""Where a trained arm slows down: its speed change on segments the slower vs. the faster member won.

    python -m projects.shapesworld_paper.segment_speed --workdir=workdirs/experiment \
        --arms=dense --out=projects/shapesworld_paper/results/segment_speed

For each trained run of each arm (every training seed), every labeled guided pair it trained on
is made again by the trained model: the same ground truth (re-rendered from the scene in the
pair's metadata, or the pair's stored `gt_latent`), the same eta and the same noise seeds, so the
only change from the stored pair is the model. The judge reads each segment's speed in both
versions of both members; a segment's speed change is the mean over the two members of trained
minus base (px/frame). Segments are grouped by their label: won by the member that is slower
there (in the base model's pair), won by the faster one, or tied. If the slowdown is learnt where
slower members won, the first group slows most; if it is a drift of the whole model, all three
slow alike. Writes `<out>.json` and `<out>.md` (mean, standard error and count per group).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from configs import dense as dense_config
from densedpo_jax.data import arrayrecord_io, schema
from densedpo_jax.model import LoRAConfig, build
from densedpo_jax.objectives import sampling
from densedpo_jax.shapesworld import judge, world
from densedpo_jax.tasks import pairs as pairs_task
from densedpo_jax.training.builders import model_config, with_overrides

GROUPS = ("slower member won", "faster member won", "tie")


def ground_truth(pair: schema.PairRecord) -> np.ndarray:
  """The pair's ground-truth video `[T, H, W, 3]`: its stored `gt_latent`, or the ShapesWorld
  scene of its metadata rendered again (the world is deterministic)."""
  if pair.gt_latent is not None:
    return np.asarray(pair.gt_latent, np.float32)
  scene = (pair.metadata or {}).get("gt_metadata") or {}
  missing = [k for k in ("colour", "shape", "direction", "speed", "start") if k not in scene]
  if missing:
    raise ValueError(f"pair {pair.id!r}: no gt_latent and no ShapesWorld scene to render "
                     f"(metadata.gt_metadata lacks {missing})")
  cfg = world.WorldConfig(num_frames=pair.num_frames, height=pair.latent_a.shape[1],
                          width=pair.latent_a.shape[2])
  return world.render(world.Scene(scene["colour"], scene["shape"], scene["direction"],
                                  float(scene["speed"]), tuple(scene["start"])), cfg)


def remake_pairs(params, model, records: Sequence[schema.PairRecord], num_steps: int,
                 batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """Both members of every guided pair made again by `params`: `(a, b)`, each `[N, T, H, W, C]`."""
  spec = with_overrides(dense_config.get_config(), **{"pairs.num_steps": num_steps}).pairs
  run = pairs_task.make_pair_sampler(model, spec, "guided", None)
  out_a, out_b = [], []
  for i in range(0, len(records), batch):
    chunk = list(records[i:i + batch])
    pad = chunk + [chunk[-1]] * (batch - len(chunk))  # Static shapes.
    keys = lambda attr: jnp.stack([jax.random.key(getattr(r, attr)) for r in pad])
    a, b = run(params, keys("seed_a"), keys("seed_b"), jnp.stack([ground_truth(r) for r in pad]),
               jnp.asarray([r.eta for r in pad], jnp.float32), jnp.stack([r.text_emb for r in pad]),
               jnp.stack([np.asarray(r.text_mask, bool) for r in pad]))
    out_a.append(np.asarray(a)[:len(chunk)])
    out_b.append(np.asarray(b)[:len(chunk)])
  return np.concatenate(out_a), np.concatenate(out_b)


def segment_changes(records, base: tuple[np.ndarray, np.ndarray],
                    trained: tuple[np.ndarray, np.ndarray]) -> dict[str, list[float]]:
  """Per group of GROUPS, each segment's speed change (trained minus base, mean of both members)."""
  out = {g: [] for g in GROUPS}
  for i, r in enumerate(records):
    fps, s = r.frames_per_segment, r.num_segments
    speed = lambda v: judge.segment_speeds(judge.judge_video(v, r.prompt, fps, num_segments=s),
                                           fps, s)
    base_a, base_b = speed(base[0][i]), speed(base[1][i])
    change = (speed(trained[0][i]) - base_a + speed(trained[1][i]) - base_b) / 2
    for k, label in enumerate(np.asarray(r.segment_labels)):
      if np.isnan(change[k]):
        continue
      if label == 0:
        out["tie"].append(float(change[k]))
        continue
      winner, loser = (base_a[k], base_b[k]) if label == 1 else (base_b[k], base_a[k])
      out[GROUPS[0] if winner < loser else GROUPS[1]].append(float(change[k]))
  return out


def base_remake(labels: dict, base_params, model, num_steps: int):
  """The labeled pairs of `labels` ({'path', 'name'}) and the base model's remake of them,
  `(records, (a, b))`, after checking that it equals the stored pairs."""
  records = list(arrayrecord_io.iter_records(labels["path"], labels["name"]))
  base = remake_pairs(base_params, model, records, num_steps)
  for r, a, b in zip(records, *base):  # The base model remakes the stored pair exactly.
    if not (np.allclose(a, r.latent_a, atol=1e-4) and np.allclose(b, r.latent_b, atol=1e-4)):
      raise ValueError(f"pair {r.id!r} of {labels['path']}/{labels['name']}: the base model "
                       "does not remake it (other sampling settings or base model?)")
  return records, base


def analyse_run(record: dict, records, base, model, num_steps: int) -> dict[str, list[float]]:
  """`segment_changes` of one trained run (its `train.json` record) on its labeled pairs
  `records`, against the base model's remake `base` (`base_remake`)."""
  trained_params = sampling.load_exported_params(record["model"], model.cfg)
  return segment_changes(records, base, remake_pairs(trained_params, model, records, num_steps))


def summarise(changes: dict[str, list[float]]) -> dict[str, dict]:
  out = {}
  for g, xs in changes.items():
    x = np.asarray(xs, np.float64)
    out[g] = {"segments": int(x.size), "mean": float(x.mean()) if x.size else float("nan"),
              "se": float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")}
  return out


def markdown(results: dict) -> str:
  lines = ["| arm | runs | " + " | ".join(f"{g}: speed change (px/frame), segments" for g in GROUPS)
           + " |", "|---" * (len(GROUPS) + 2) + "|"]
  for arm, r in results["arms"].items():
    cells = [f"{r['summary'][g]['mean']:+.4f} ± {r['summary'][g]['se']:.4f}, "
             f"{r['summary'][g]['segments']}" for g in GROUPS]
    lines.append(f"| {arm} | {r['runs']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main_runs(workdir: str, arms: Sequence[str]) -> dict:
  results = {"workdir": workdir, "arms": {}}
  model = cfg = base_params = None
  remakes = {}  # (path, name, steps) -> base_remake: the seeds of an arm share their labels.
  for arm in arms:
    folder = arm.replace(":", "_").replace("=", "")
    paths = sorted(glob.glob(os.path.join(workdir, "runs", folder, "*", "seed*", "train.json")))
    if not paths:
      raise ValueError(f"no trained run of arm {arm!r} under {workdir}/runs/{folder}")
    pooled = {g: [] for g in GROUPS}
    for path in paths:
      with open(path) as f:
        record = json.load(f)
      if not record.get("labels"):
        raise ValueError(f"{path}: arm {arm!r} trained on no labeled pairs")
      if model is None:  # One base model for every run of the workdir.
        config = with_overrides(dense_config.get_config(), init_from=record["settings"]["init_from"])
        cfg = model_config(config)
        model = build(cfg.replace(lora=LoRAConfig()))
        base_params = sampling.load_exported_params(config.init_from, cfg)
      steps = int(record["settings"]["pairs.num_steps"])
      key = (record["labels"]["path"], record["labels"]["name"], steps)
      if key not in remakes:
        remakes[key] = base_remake(record["labels"], base_params, model, steps)
      changes = analyse_run(record, *remakes[key], model, steps)
      for g in GROUPS:
        pooled[g] += changes[g]
      print(f"segment_speed: {arm} {os.path.dirname(path)}: "
            + ", ".join(f"{g} {np.mean(v):+.4f} ({len(v)})" for g, v in changes.items() if v))
    results["arms"][arm] = {"runs": len(paths), "summary": summarise(pooled)}
  return results


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/experiment", help="the experiment workdir")
  parser.add_argument("--arms", default="dense",
                      help="comma list of arms (keys of config.experiment.arms) to analyse")
  parser.add_argument("--out", default="", help="writes OUT.json and OUT.md; empty: print only")
  args = parser.parse_args(argv)
  results = main_runs(args.workdir, [a for a in args.arms.split(",") if a])
  text = markdown(results)
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
      json.dump(results, f, indent=1)
    with open(args.out + ".md", "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
