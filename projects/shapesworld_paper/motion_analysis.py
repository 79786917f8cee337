"""Where DenseDPO's slowdown comes from: the motion inside guided pairs and their segment labels.

    python -m projects.shapesworld_paper.motion_analysis --workdir=workdirs/experiment \
        --out=projects/shapesworld_paper/results/motion_analysis \
        [--motion=projects/shapesworld_paper/results/shapesworld_motion.json]

For every guided pair set of an experiment workdir (one per eta range or segment length) and
each of its segment-labeled subsets, the judge scores both members of every pair again and
this reports:
  pairs     by eta bin: the members' mean speed, the mean |speed difference| of the two
            members (px/frame, whole clip) and the share of pairs whose members differ by more
            than 0.1 px/frame;
  segments  over non-tie segments: the share whose winner is the slower member in that segment
            (0.5: no motion bias), the mean winner-minus-loser segment speed, and both again
            for the segments the loss keeps (pairs with enough non-tie segments);
and, from the motion experiment's per-prompt scores, whether the policy slows down only on
prompts whose base samples have artifacts (speed change vs. base, on prompts with and without).
Writes `<out>.json` and `<out>.md`.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Sequence

import numpy as np
from absl import app, flags

from projects.shapesworld_paper import report, stats
from densedpo_jax.data import arrayrecord_io
from densedpo_jax.labeling import oracle
from densedpo_jax.shapesworld import judge

ETA_BINS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)


def analyse_labels(pair_dir: str, name: str, min_nontie_frac: float = 0.2) -> dict:
  """Motion statistics of one labeled pair set (see the module doc)."""
  rows, scorer = [], oracle.SegmentOracle()
  for rec in arrayrecord_io.iter_records(pair_dir, name):
    sa, sb = scorer.judge_pair(rec, *oracle.identity_decoder(rec))
    speeds = [judge.segment_speeds(s, rec.frames_per_segment, rec.num_segments) for s in (sa, sb)]
    labels = np.asarray(rec.segment_labels, np.int64)
    win = np.where(labels > 0, speeds[0], speeds[1])
    lose = np.where(labels > 0, speeds[1], speeds[0])
    nontie = labels != 0
    rows.append({"eta": float(rec.eta), "clip_diff": abs(sa.mean_speed - sb.mean_speed),
                 "speed": (sa.mean_speed + sb.mean_speed) / 2,
                 "seg_diff": (win - lose)[nontie].tolist(),
                 "kept": bool(nontie.mean() > min_nontie_frac)})
  if not rows:
    raise ValueError(f"{pair_dir}/{name} holds no pairs")
  out = {"name": name, "num_pairs": len(rows), "by_eta": []}
  etas = np.array([r["eta"] for r in rows])
  diffs = np.array([r["clip_diff"] for r in rows])
  speeds = np.array([r["speed"] for r in rows])
  out["mean_member_speed"] = float(speeds.mean())
  for lo, hi in zip(ETA_BINS[:-1], ETA_BINS[1:]):
    sel = (etas >= lo) & (etas < hi)
    if sel.any():
      out["by_eta"].append({"eta": [lo, hi], "pairs": int(sel.sum()),
                            "mean_member_speed": float(speeds[sel].mean()),
                            "mean_abs_speed_diff": float(diffs[sel].mean()),
                            "share_over_0.1": float((diffs[sel] > 0.1).mean())})
  for key, keep in (("segments", lambda r: True), ("kept_segments", lambda r: r["kept"])):
    d = np.concatenate([np.asarray(r["seg_diff"]) for r in rows if keep(r)] or [np.zeros(0)])
    d = d[~np.isnan(d)]
    out[key] = {"count": int(d.size),
                "winner_slower_share": float((d < 0).mean()) if d.size else float("nan"),
                "mean_winner_minus_loser_speed": float(d.mean()) if d.size else float("nan")}
  return out


def ground_truth_motion(data_dir: str, split: str, max_videos: int = 512) -> dict:
  """Judge speed statistics of the first `max_videos` ground-truth ShapesWorld videos of `split`
  (TFDS under `data_dir`): the motion the guided pairs start from."""
  from densedpo_jax.data import tfds_builder
  source = tfds_builder.shapesworld_source(split, data_dir=data_dir)
  n = min(max_videos, len(source))
  scores = []
  for i in range(n):
    rec = arrayrecord_io.decode_raw(source[i])
    scores.append(judge.judge_video(np.asarray(rec.latent, np.float32), rec.prompt))
  agg = judge.aggregate(scores)
  return {"split": split, "videos": n, "mean_speed": agg["mean_speed"],
          "fast_share": agg["fast_share"], "artifact_share": agg["artifact_share"]}


def artifact_split(motion: dict) -> list[dict]:
  """Per trained arm and evaluation seed: the mean-speed change against the base model on
  prompts whose base samples have artifacts and on those without, with 95% bootstrap intervals."""
  by_arm = report.runs_by_arm(motion["runs"])
  if "pretrained" not in by_arm:
    return []
  out = []
  for arm, seed in ((a, str(s)) for a in by_arm if a != "pretrained"
                    for s in motion["config"]["eval_seeds"]):
    base_art = stats.prompt_means(by_arm["pretrained"], "artifact_share", seed)
    delta = (stats.prompt_means(by_arm[arm], "mean_speed", seed)
             - stats.prompt_means(by_arm["pretrained"], "mean_speed", seed))
    row = {"eval_seed": seed, "arm": arm}
    for key, sel in (("with_artifacts", base_art > 0), ("without", base_art == 0)):
      row[key] = ({"prompts": int(sel.sum()), "speed_change": stats.bootstrap_diff(delta[sel])}
                  if sel.sum() >= 2 else {"prompts": int(sel.sum()), "speed_change": None})
    out.append(row)
  return out


def render(result: dict) -> str:
  lines = ["# Motion inside guided pairs and their segment labels", "",
           "Written by `python -m projects.shapesworld_paper.motion_analysis`. Speeds are the judge's, px/frame.",
           "", "## Members of a pair: speed difference by eta", "",
           "| pair set | labels | eta | pairs | members' mean speed | mean abs speed difference | "
           "share over 0.1 |", "|---|---|---|---|---|---|---|"]
  for s in result["label_sets"]:
    for b in s["by_eta"]:
      lines.append(f"| {s['pairs']} | {s['name']} | {b['eta'][0]:.1f}-{b['eta'][1]:.1f} | "
                   f"{b['pairs']} | {b['mean_member_speed']:.3f} | {b['mean_abs_speed_diff']:.3f} | "
                   f"{b['share_over_0.1']:.3f} |")
  lines += ["", "## Non-tie segments: is the winner the slower member?", "",
            "| pair set | labels | segments | winner slower | winner minus loser speed | "
            "kept segments | winner slower (kept) | winner minus loser (kept) |",
            "|---|---|---|---|---|---|---|---|"]
  for s in result["label_sets"]:
    a, k = s["segments"], s["kept_segments"]
    lines.append(f"| {s['pairs']} | {s['name']} | {a['count']} | {a['winner_slower_share']:.3f} | "
                 f"{a['mean_winner_minus_loser_speed']:+.4f} | {k['count']} | "
                 f"{k['winner_slower_share']:.3f} | {k['mean_winner_minus_loser_speed']:+.4f} |")
  if result.get("ground_truth"):
    lines += ["", "## Ground-truth videos (what guided pairs start from)", "",
              "| split | videos | mean speed | fast share | artifact share |", "|---|---|---|---|---|"]
    for g in result["ground_truth"]:
      lines.append(f"| {g['split']} | {g['videos']} | {g['mean_speed']:.3f} | {g['fast_share']:.3f} | "
                   f"{g['artifact_share']:.3f} |")
  if result.get("artifact_split"):
    lines += ["", "## Speed change against the base model, by the base model's artifacts", "",
              "| arm | eval seed | prompts with base artifacts | speed change [95% CI] | "
              "prompts without | speed change [95% CI] |", "|---|---|---|---|---|---|"]
    for r in result["artifact_split"]:
      cells = []
      for key in ("with_artifacts", "without"):
        c = r[key]["speed_change"]
        cells += [str(r[key]["prompts"]), stats.fmt_ci(*c) if c else "–"]
      lines.append(f"| {r['arm']} | {r['eval_seed']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def run(workdir: str, out: str, motion_results: str = "", min_nontie_frac: float = 0.2,
        videos: str = "") -> dict:
  sets = []
  for pair_dir in sorted(glob.glob(os.path.join(workdir, "pairs_guided_*"))):
    side = arrayrecord_io.read_sidecar(pair_dir, "pairs")
    largest = {}  # Label sets of one setting are prefixes of each other: take the largest.
    for p in glob.glob(os.path.join(pair_dir, "labels_segment_n*_*.label_stats.json")):
      name = os.path.basename(p)[:-len(".label_stats.json")]
      count, setting = name[len("labels_segment_n"):].split("_", 1)
      if int(count) > largest.get(setting, ("", 0))[1]:
        largest[setting] = (name, int(count))
    for name, _ in sorted(largest.values()):
      with open(os.path.join(pair_dir, f"{name}.label_stats.json")) as f:
        params = json.load(f).get("labeler_params", {})
      if params.get("flip_prob"):
        continue  # Flipped labels say nothing about the labeler's motion preference.
      set_stats = analyse_labels(pair_dir, name, min_nontie_frac)
      set_stats.update(pairs=os.path.basename(pair_dir), tie_margin=params.get("tie_margin"),
                   keep_wins=params.get("keep_wins", "all"),
                   eta_range=(side.get("metadata") or {}).get("eta_range"))
      sets.append(set_stats)
      print(f"motion_analysis: {pair_dir}/{name}: {set_stats['segments']}")
  result = {"label_sets": sets, "artifact_split": None,
            "ground_truth": ([ground_truth_motion(videos, split) for split in ("train", "heldout")]
                             if videos else [])}
  if motion_results and os.path.exists(motion_results):
    with open(motion_results) as f:
      result["artifact_split"] = artifact_split(json.load(f))
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump(result, f, indent=1)
  with open(out + ".md", "w") as f:
    f.write(render(result))
  print(render(result))
  return result


def main(argv: Sequence[str]) -> None:
  del argv
  run(_WORKDIR.value, _OUT.value, _MOTION.value, videos=_VIDEOS.value)


def define_flags() -> None:
  """Flags of the script (defined only when it runs, so that other entry points can share
  names such as --out in one process)."""
  global _WORKDIR, _OUT, _VIDEOS, _MOTION
  _WORKDIR = flags.DEFINE_string("workdir", "workdirs/experiment", "the experiment workdir")
  _OUT = flags.DEFINE_string("out", "projects/shapesworld_paper/results/motion_analysis", "output stem (.json and .md)")
  _VIDEOS = flags.DEFINE_string("videos", "workdirs/tfds", "ShapesWorld TFDS folder ('' skips the "
                                "ground-truth statistics)")
  _MOTION = flags.DEFINE_string("motion", "projects/shapesworld_paper/results/shapesworld_motion.json",
                                "the motion experiment's results (per-prompt scores); '' skips")


if __name__ == "__main__":
  define_flags()
  app.run(main)
