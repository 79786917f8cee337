"""How well one labeler agrees with reference labels (the paper's Tab. 3(a) measure).

    python -m densedpo_jax.labeling.agreement --labels=DIR/pairs_vlm --reference=DIR/pairs_segment
    (either side may also be a JSONL label file in the data/labels_io.py format)

  segment accuracy   share of the reference's non-tie segments where the labeler picks the same
                     winner (reference ties are left out, as in Tab. 3(a); a labeler tie there
                     counts as a miss)
  whole accuracy     the same over pairs with a non-tie reference global label, for the
                     labeler's own global label and for the majority vote of its segment labels
  tie rate           share of the labeler's segment labels that are ties
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Optional

import numpy as np

from densedpo_jax.data import arrayrecord_io, codec, jsonl
from densedpo_jax.labeling.oracle import majority_vote

Labels = dict[str, tuple[Optional[np.ndarray], Optional[int]]]  # id -> (segment labels, global)


def load_labels(path: str) -> Labels:
  """Labels of a pair dataset (`DIR/NAME`, its sidecar `DIR/NAME.json` exists) or a JSONL file."""
  directory, name = os.path.split(os.path.normpath(path))
  out: Labels = {}
  if os.path.exists(arrayrecord_io.sidecar_path(directory or ".", name)):
    for raw, header in arrayrecord_io.iter_headers(directory or ".", name):
      seg = codec.read_array(raw.data, header, "segment_labels", raw.path, raw.position)
      out[header["fields"]["id"]] = (seg, header["fields"].get("global_label"))
    return out
  for n, line in jsonl.read_lines(path):  # Undecodable bytes: JsonlError naming the line.
    try:
      d = json.loads(line)
      seg = d.get("segment_labels")
      out[d["id"]] = (None if seg is None else np.asarray(seg, np.int8), d.get("global_label"))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
      raise ValueError(f"{path}:{n}: not a label line ({str(e)[:120]})") from None
  return out


def agreement(labels: Labels, reference: Labels) -> dict[str, Any]:
  """The module doc's measures over the pairs both sides label."""
  common = sorted(set(labels) & set(reference))
  hits = nontie = ties = segs = 0
  whole_hits = vote_hits = whole_n = 0
  for pid in common:
    (seg, glob), (ref_seg, ref_glob) = labels[pid], reference[pid]
    if seg is not None and ref_seg is not None:
      if len(seg) != len(ref_seg):
        raise ValueError(f"pair {pid!r}: {len(seg)} segment labels vs {len(ref_seg)} in the reference")
      mask = ref_seg != 0
      nontie += int(mask.sum())
      hits += int((seg[mask] == ref_seg[mask]).sum())
      ties += int((seg == 0).sum())
      segs += len(seg)
    if ref_glob not in (None, 0):
      whole_n += 1
      whole_hits += int(glob == ref_glob)
      vote_hits += int(seg is not None and int(majority_vote(seg)) == ref_glob)
  ratio = lambda a, b: a / b if b else float("nan")
  return {"pairs": len(common), "nontie_segments": nontie, "segment_accuracy": ratio(hits, nontie),
          "whole_pairs": whole_n, "whole_accuracy": ratio(whole_hits, whole_n),
          "majority_vote_accuracy": ratio(vote_hits, whole_n), "tie_rate": ratio(ties, segs)}


def format_table(report: dict[str, Any], name: str = "labeler") -> str:
  pct = lambda x: "n/a" if x != x else f"{100 * x:.1f}%"
  return "\n".join([
      "| labeler | segment acc. (non-tie) | whole acc. | majority-vote acc. | tie rate | pairs |",
      "|---|---|---|---|---|---|",
      f"| {name} | {pct(report['segment_accuracy'])} ({report['nontie_segments']} segments) | "
      f"{pct(report['whole_accuracy'])} ({report['whole_pairs']} pairs) | "
      f"{pct(report['majority_vote_accuracy'])} | {pct(report['tie_rate'])} | {report['pairs']} |"])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--labels", required=True, help="DIR/NAME of a labeled pair dataset, or JSONL")
  parser.add_argument("--reference", required=True, help="the same, for the reference labels")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  report = agreement(load_labels(args.labels), load_labels(args.reference))
  print(json.dumps(report, indent=1) if args.json else format_table(report, args.labels))


if __name__ == "__main__":
  main()
