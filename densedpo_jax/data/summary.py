"""Counts, shapes and label statistics of a record dataset (function and CLI).

    python -m densedpo_jax.data.summary /path/to/dir pairs        # table
    python -m densedpo_jax.data.summary /path/to/dir pairs --json # machine-readable

Only record headers and label arrays are read, never the latents.

Label statistics of pair datasets (+1: video a wins, -1: b wins, 0: tie):
  segment_label_share   share of -1 / 0 / +1 over all labeled segments
  tie_share_by_segment  share of ties at each segment position (0 .. S-1)
  mixed_winner_share    share of segment-labeled pairs where a wins some segment
                        and b wins another (the paper reports more than 60% of
                        its pairs have segments with different winners)
  non_uniform_share     share of pairs whose segment labels are not all equal
  dense_kept_share      share kept by the DenseDPO filter (non-tie share > 0.2)
  global_label_share    share of -1 / 0 / +1 among globally labeled pairs
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
from typing import Any, Optional, Sequence

import numpy as np

from densedpo_jax.data import segments
from densedpo_jax.data import arrayrecord_io
from densedpo_jax.data import codec
from densedpo_jax.data import schema


def _shares(counter: collections.Counter, keys=(-1, 0, 1)) -> dict[str, float]:
  total = sum(counter[k] for k in keys)
  return {str(k): (counter[k] / total if total else math.nan) for k in keys}


def summarize(directory: str, name: str, min_nontie_frac: float = 0.2,
              verify: bool = False) -> dict[str, Any]:
  """Summary of a dataset written by `arrayrecord_io` (see the module doc for the keys).

  With `verify`, every record is also read whole, decoded and validated, and unreadable or
  invalid records are listed in `problems` (`shard`, `record`, `error`) instead of stopping.
  """
  side = arrayrecord_io.read_sidecar(directory, name)
  out: dict[str, Any] = {
      "name": name,
      "directory": directory,
      "num_records": side["num_records"],
      "num_shards": side["num_shards"],
      "bytes": sum(os.path.getsize(os.path.join(directory, s["file"])) for s in side["shards"]),
      "signature": side["signature"],
  }
  out["bytes_per_record"] = out["bytes"] / max(side["num_records"], 1)
  kind = (side["signature"] or {}).get("kind")
  out["kind"] = kind
  prompts, sources, labelers = set(), collections.Counter(), collections.Counter()
  seg_counts, glob_counts = collections.Counter(), collections.Counter()
  ties_by_pos, labeled_by_pos = collections.Counter(), collections.Counter()
  etas, n_seg, n_glob, mixed, non_uniform, kept = [], 0, 0, 0, 0, 0
  src = arrayrecord_io.ShardedSource(directory, name, max_unreadable_share=1.0 if verify else 0.0)
  problems = []
  for i in range(len(src)):
    raw = src[i]
    if raw.data is None:
      problems.append({"shard": raw.path, "record": raw.position, "error": src.unreadable[i]})
      continue
    header = codec.read_header(raw.data, raw.path, raw.position)
    if verify:
      try:
        arrayrecord_io.decode_raw(raw)
      except (schema.RecordError, ValueError) as e:
        problems.append({"shard": raw.path, "record": raw.position, "error": str(e)})
        continue
    f = header["fields"]
    prompts.add(f["prompt"])
    if header["kind"] != "pair":
      continue
    sources[f["source"]] += 1
    if f["source"] == "guided":
      etas.append(f["eta"])
    if f.get("labeler"):
      labelers[f["labeler"]] += 1
    seg = codec.read_array(raw.data, header, "segment_labels", raw.path, raw.position)
    if seg is not None:
      n_seg += 1
      seg_counts.update(seg.tolist())
      for pos, v in enumerate(seg.tolist()):
        labeled_by_pos[pos] += 1
        ties_by_pos[pos] += v == 0
      mixed += bool((seg == 1).any() and (seg == -1).any())
      non_uniform += bool((seg != seg[0]).any())
      kept += bool(segments.keep_pair(seg, min_nontie_frac))
    if f.get("global_label") is not None:
      n_glob += 1
      glob_counts[f["global_label"]] += 1
  out["num_prompts"] = len(prompts)
  out["verified"], out["problems"] = verify, problems
  if kind == "pair":
    out.update({
        "sources": dict(sources),
        "eta": ({"min": min(etas), "mean": float(np.mean(etas)), "max": max(etas)} if etas else None),
        "labelers": dict(labelers),
        "num_segment_labeled": n_seg,
        "num_global_labeled": n_glob,
        "segment_label_share": _shares(seg_counts),
        "tie_share_by_segment": [ties_by_pos[p] / labeled_by_pos[p] for p in sorted(labeled_by_pos)],
        "mixed_winner_share": mixed / n_seg if n_seg else math.nan,
        "non_uniform_share": non_uniform / n_seg if n_seg else math.nan,
        "dense_kept_share": kept / n_seg if n_seg else math.nan,
        "min_nontie_frac": min_nontie_frac,
        "global_label_share": _shares(glob_counts),
    })
  return out


def format_summary(s: dict[str, Any]) -> str:
  """A short human-readable table of `summarize`'s result."""
  sig = s["signature"] or {}
  lines = [
      f"dataset {s['name']} ({s['kind']}) in {s['directory']}",
      f"  records        {s['num_records']} in {s['num_shards']} shards, "
      f"{s['bytes'] / 2**20:.1f} MiB ({s['bytes_per_record'] / 2**10:.1f} KiB a record)",
      f"  prompts        {s['num_prompts']} distinct",
      *([f"  verified       {s['num_records'] - len(s['problems'])} of {s['num_records']} records "
         "readable and valid"] if s.get("verified") else []),
      *[f"  PROBLEM        {p['shard']}, record {p['record']}: {p['error']}"
        for p in s.get("problems", [])],
      f"  latent         {sig.get('latent_shape')} stored as {sig.get('latent_dtype')}; "
      f"text {sig.get('text_shape')}",
      f"  timing         num_frames={sig.get('num_frames')}, temporal_factor={sig.get('temporal_factor')}, "
      f"causal={sig.get('causal')}" + (f", frames_per_segment={sig['frames_per_segment']}"
                                       if "frames_per_segment" in sig else ""),
  ]
  if s["kind"] == "pair":
    pct = lambda x: "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"  # pylint: disable=unnecessary-lambda-assignment
    share = lambda d: ", ".join(f"{k:>2}: {pct(v)}" for k, v in d.items())  # pylint: disable=unnecessary-lambda-assignment
    eta = s["eta"]
    lines += [
        f"  sources        {s['sources']}" + (f"; guided eta {eta['min']:.2f}..{eta['max']:.2f} "
                                              f"(mean {eta['mean']:.2f})" if eta else ""),
        f"  labelers       {s['labelers'] or 'none'}",
        f"  segment labels {s['num_segment_labeled']} pairs; {share(s['segment_label_share'])}",
        f"  ties by segment " + " ".join(pct(x) for x in s["tie_share_by_segment"]),
        f"  mixed winners  {pct(s['mixed_winner_share'])} of segment-labeled pairs "
        f"(non-uniform {pct(s['non_uniform_share'])}); kept by the dense filter "
        f"(> {s['min_nontie_frac']:.0%} non-tie) {pct(s['dense_kept_share'])}",
        f"  global labels  {s['num_global_labeled']} pairs; {share(s['global_label_share'])}",
    ]
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("directory")
  parser.add_argument("name")
  parser.add_argument("--min_nontie_frac", type=float, default=0.2)
  parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
  parser.add_argument("--verify", action="store_true",
                      help="also read and validate every record (latents included); exit 1 if "
                      "any is unreadable or invalid")
  args = parser.parse_args(argv)
  s = summarize(args.directory, args.name, args.min_nontie_frac, verify=args.verify)
  print(json.dumps(s, indent=1) if args.json else format_summary(s))
  return 1 if s["problems"] else 0


if __name__ == "__main__":
  sys.exit(main())
