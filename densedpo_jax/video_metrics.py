"""Motion and temporal-consistency metrics of video files, with no model download.

    python -m densedpo_jax.video_metrics --videos=DIR_OR_INDEX --out=FILE.json

`--videos`: a folder (every MP4 / GIF / WebM / MOV / MKV / AVI under it), the `index.jsonl` that
`python -m densedpo_jax.decode` writes (each record's clip, or a pair's members `a` and `b`; the
side-by-side `pair` file is left out), or the `prompts.json` that `task=evaluate` writes beside
its samples. The metrics are `densedpo_jax.metrics.temporal`'s (OpenCV optical flow; VBench's
dynamic degree and temporal flickering rules). Output:

    {"videos": [{"file", "prompt"?, "id"?, "member"?, "num_frames", "fps", "height", "width",
                 "motion_px_per_frame", "dynamic_degree", "temporal_flickering",
                 "warping_error", "occluded_share"}],
     "skipped": [{"file", "error"}],
     "summary": {"videos", "skipped", "<metric>_mean" for each metric}}

A file that cannot be read (empty, truncated, not a video) is named, skipped and counted. Every
scored video is appended to `FILE.json.partial.jsonl` as it is done, so an interrupted run
resumes where it stopped (files changed since are scored again); the JSON is written at the end.
Needs the `[metrics]` extra (`pip install -e ".[metrics]"`: opencv-python-headless).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from typing import Any

from densedpo_jax.metrics.video_files import VideoReadError, read_frames

VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".mov", ".mkv", ".avi")


def list_videos(source: str) -> list[dict[str, Any]]:
  """`[{'file': path, ...}]` of a folder, a decode `index.jsonl` or an evaluate `prompts.json`
  (with the prompt, and the record id and pair member where the index has them)."""
  if os.path.isdir(source):
    items = [{"file": os.path.join(root, name)}
             for root, _, names in os.walk(source) for name in names
             if name.lower().endswith(VIDEO_SUFFIXES) and not name.startswith(".")]
    if not items:
      raise SystemExit(f"video_metrics: {source}: no video files ({', '.join(VIDEO_SUFFIXES)}) "
                       "in this folder or below it")
    return sorted(items, key=lambda item: item["file"])
  if not os.path.isfile(source):
    raise SystemExit(f"video_metrics: --videos={source}: no such folder or file")
  base = os.path.dirname(source)
  items = []
  if source.endswith(".jsonl"):  # decode's index: one record a line.
    with open(source) as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          entry = json.loads(line)
          files = entry["files"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise SystemExit(f"video_metrics: {source} line {n}: expected a decode index line with "
                           f"'files' ({e!r})") from None
        for member, file in files.items():
          if member != "pair":  # The side-by-side view of a pair's members.
            items.append({"file": os.path.join(base, file), "prompt": entry.get("prompt"),
                          "id": entry.get("id"), **({"member": member} if member != "video" else {})})
  elif source.endswith(".json"):  # evaluate's prompts.json: [{"file", "prompt"}].
    try:
      with open(source) as f:
        entries = json.load(f)
      items = [{"file": os.path.join(base, e["file"]), "prompt": e.get("prompt")} for e in entries]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise SystemExit(f"video_metrics: {source}: expected a list of {{'file', 'prompt'}} "
                       f"({e!r})") from None
  else:
    raise SystemExit(f"video_metrics: --videos={source}: expected a folder, an index.jsonl or a "
                     "prompts.json")
  if not items:
    raise SystemExit(f"video_metrics: {source} lists no videos")
  return items


def _stamp(path: str) -> list:
  """What makes an earlier score of `path` still valid: its size and modification time."""
  try:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]
  except OSError:
    return [None, None]


def _read_partial(path: str) -> dict[str, dict]:
  done = {}
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        try:
          row = json.loads(line)
          done[row["file"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
          continue  # A line cut short by the interruption: scored again.
  return done


def summarize(videos: list[dict], skipped: list[dict]) -> dict[str, Any]:
  """Counts, and each metric's mean over the scored videos (`dynamic_degree_mean` is VBench's
  dimension score: the share of videos that move)."""
  import numpy as np
  from densedpo_jax.metrics.temporal import METRICS
  out: dict[str, Any] = {"videos": len(videos), "skipped": len(skipped)}
  for name in METRICS:
    values = [v[name] for v in videos if v.get(name) is not None and math.isfinite(v[name])]
    out[f"{name}_mean"] = float(np.mean(values)) if values else None
  return out


def _duration(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def score_videos(items: list[dict], out: str, log=print) -> dict[str, Any]:
  """Scores `items` (`list_videos`), resuming from `out`'s partial file; writes `out`."""
  import cv2
  from densedpo_jax import distributed
  from densedpo_jax.metrics.temporal import video_metrics
  partial = out + ".partial.jsonl"
  done = _read_partial(partial)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  videos, skipped = [], []
  start, last_line, fresh = time.time(), 0.0, 0
  todo = sum(1 for item in items if done.get(item["file"], {}).get("stamp") != _stamp(item["file"]))
  if len(items) > todo:
    log(f"video_metrics: {len(items) - todo} of {len(items)} videos already scored in {partial}")
  with open(partial, "a") as sink:
    for item in items:
      stamp = _stamp(item["file"])
      row = done.get(item["file"])
      if row is None or row.get("stamp") != stamp:
        try:
          frames, fps = read_frames(item["file"])
          row = dict(item, num_frames=len(frames), fps=fps, height=frames.shape[1],
                     width=frames.shape[2], **video_metrics(frames, fps))
        except (VideoReadError, ValueError, cv2.error) as e:  # Named, skipped, counted.
          row = dict(item, error=str(e))
        row["stamp"] = stamp
        sink.write(json.dumps(row) + "\n")
        sink.flush()
        fresh += 1
        now = time.time()
        if now - last_line >= 10 or fresh == todo:
          rate = (now - start) / fresh
          log(f"video_metrics: {fresh}/{todo} scored ({len(skipped) + ('error' in row)} skipped), "
              f"{rate:.2f} s/video, ETA {_duration(rate * (todo - fresh))}")
          last_line = now
      row = {k: v for k, v in row.items() if k != "stamp"}
      if "error" in row:
        skipped.append({"file": row["file"], "error": row["error"]})
        log(f"video_metrics: skipped {row['error']}")
      else:
        videos.append(row)
  result = {"videos": videos, "skipped": skipped, "summary": summarize(videos, skipped)}
  distributed.write_json(distributed.path(out), result)
  os.remove(partial)
  return result


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--videos", required=True, help="a folder, decode's index.jsonl or "
                      "evaluate's prompts.json")
  parser.add_argument("--out", required=True, help="the JSON file to write")
  args = parser.parse_args(argv)
  if importlib.util.find_spec("cv2") is None:
    raise SystemExit("video_metrics needs OpenCV: pip install -e \".[metrics]\" "
                     "(opencv-python-headless)")
  items = list_videos(args.videos)
  result = score_videos(items, args.out, log=lambda line: print(line, file=sys.stderr, flush=True))
  s = result["summary"]
  print(f"{s['videos']} videos scored, {s['skipped']} skipped -> {args.out}")
  for key, value in s.items():
    if key.endswith("_mean") and value is not None:
      print(f"  {key[:-5]:<22} {value:.4f}")


if __name__ == "__main__":
  main()
