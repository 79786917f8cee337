"""Preference labels <-> JSON Lines, for human annotators and external labelers.

One line a pair:

    {"id": "pair-000017", "segment_labels": [1, 0, -1, 1], "global_label": 1}

`segment_labels` (length S, values in {-1, 0, 1}; +1: video a wins) and
`global_label` (-1, 0 or 1) may each be null or missing; extra keys are ignored
on import, so an exported file (which adds prompt and timing for the annotator)
can be filled in and imported back as it is. Files of the annotation page may hold one line per
annotator of a pair (distinct `annotator` fields): their labels are combined, kept where they
agree and a tie where they differ; a line with `"broken": true` is not used.

Import checks every line before anything is written and raises one
`LabelImportError` listing every bad line (bad JSON, missing or unknown id,
duplicate id, wrong number of segments, values out of range). A good file is
merged into the pairs, which are re-written as new shards (atomically).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

import numpy as np

from densedpo_jax import console
from densedpo_jax.data import segments
from densedpo_jax.data import arrayrecord_io
from densedpo_jax.data import codec
from densedpo_jax.data import jsonl
from densedpo_jax.data import schema


class LabelImportError(console.JobError, ValueError):
  """Every problem of a label file; `problems` is a list of (line number, message)."""

  def __init__(self, path: str, problems: list[tuple[int, str]]):
    self.path, self.problems = path, problems
    lines = "\n".join(f"  {path}:{n}: {msg}" for n, msg in problems)
    super().__init__(f"{len(problems)} bad line(s) in {path}:\n{lines}")


def export_labels(directory: str, name: str, jsonl_path: str) -> int:
  """Writes one JSON line a pair of a dataset (labels null when absent); returns the count.

  Only record headers are read (no latents).
  """
  def lines():
    for raw, header in arrayrecord_io.iter_headers(directory, name):
      if header["kind"] != "pair":
        raise ValueError(f"{directory}/{name} holds {header['kind']} records, not pairs")
      fields = header["fields"]
      seg = codec.read_array(raw.data, header, "segment_labels", raw.path, raw.position)
      yield {
          "id": fields["id"],
          "prompt": fields["prompt"],
          "num_segments": _num_segments(header),
          "frames_per_segment": fields["frames_per_segment"],
          "num_frames": fields["num_frames"],
          "fps": fields["fps"],
          "source": fields["source"],
          "segment_labels": None if seg is None else seg.tolist(),
          "global_label": fields.get("global_label"),
          "labeler": fields.get("labeler"),
      }
  return jsonl.write_all(jsonl_path, lines())  # Whole or not at all.


def _num_segments(header: dict) -> int:
  spec = header["arrays"].get("segment_labels")
  if spec is not None:
    return int(spec[1][0])
  f = header["fields"]
  return segments.default_num_segments(f["num_frames"], f["frames_per_segment"])


def parse_labels(jsonl_path: str, num_segments_by_id: dict[str, int]) -> dict[str, dict[str, Any]]:
  """Reads and checks a label file against known pair ids and their segment counts.

  Returns:
    id -> {'segment_labels': int8 [S] or None, 'global_label': int or None}
    for ids whose line sets at least one of them.

  Raises:
    LabelImportError: listing every bad line.
  """
  problems, out, seen = [], {}, {}
  try:
    lines = list(jsonl.read_lines(jsonl_path))
  except jsonl.JsonlError as e:  # Undecodable bytes: reported with the problems before them.
    lines, problems = [], [(e.line, e.message)]
  for n, line in lines:
    try:
      obj = json.loads(line)
    except (ValueError, RecursionError) as e:
      problems.append((n, f"not valid JSON ({str(e)[:120]})"))
      continue
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
      problems.append((n, "missing 'id' (a string)"))
      continue
    pid = obj["id"]
    if pid not in num_segments_by_id:
      problems.append((n, f"unknown id {pid!r}"))
      continue
    annotator = obj.get("annotator")
    if pid in seen and (annotator is None or annotator in seen[pid]):
      problems.append((n, f"duplicate id {pid!r}" + (f" from annotator {annotator!r}"
                                                      if annotator is not None else "")))
      continue
    seen.setdefault(pid, set()).add(annotator)
    if obj.get("broken") is True:  # Flagged by an annotator: nothing of this line is used.
      continue
    entry, bad = {"segment_labels": None, "global_label": None}, []
    seg = obj.get("segment_labels")
    if seg is not None:
      want = num_segments_by_id[pid]
      if not isinstance(seg, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in seg):
        bad.append(f"segment_labels must be a list of ints, got {seg!r}")
      elif len(seg) != want:
        bad.append(f"segment_labels has {len(seg)} values, pair {pid!r} has {want} segments")
      elif any(v not in schema.LABEL_VALUES for v in seg):
        bad.append(f"segment_labels values must be in {{-1, 0, 1}}, got {seg}")
      else:
        entry["segment_labels"] = np.asarray(seg, np.int8)
    glob = obj.get("global_label")
    if glob is not None:
      if isinstance(glob, bool) or glob not in schema.LABEL_VALUES:
        bad.append(f"global_label must be -1, 0 or 1, got {glob!r}")
      else:
        entry["global_label"] = int(glob)
    if bad:
      problems.extend((n, m) for m in bad)
    elif entry["segment_labels"] is not None or entry["global_label"] is not None:
      out[pid] = _agree(out[pid], entry) if pid in out else entry
  if problems:
    raise LabelImportError(jsonl_path, problems)
  return out


def _agree(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
  """Two annotators' labels of one pair: kept where they agree, a tie where they differ or one
  of them gave none."""
  seg = [first["segment_labels"], second["segment_labels"]]
  glob = [first["global_label"], second["global_label"]]
  return {"segment_labels": (np.where(seg[0] == seg[1], seg[0], 0).astype(np.int8)
                             if seg[0] is not None and seg[1] is not None else None),
          "global_label": glob[0] if glob[0] == glob[1] else (None if None in glob else 0)}


def import_labels(jsonl_path: str, directory: str, name: str, out_directory: str, out_name: str,
                  labeler: str = "human", labeler_params: Optional[dict] = None,
                  num_shards: Optional[int] = None, require_all: bool = False) -> dict[str, int]:
  """Merges a label file into a pair dataset, writing the result as a new dataset.

  Args:
    jsonl_path: the label file (one JSON object a line, see the module doc).
    directory, name: the pair dataset to label.
    out_directory, out_name: where to write the labeled copy (may equal the input:
      the old shards are replaced only once the new ones are complete).
    labeler, labeler_params: provenance stored on every pair that got labels.
    num_shards: shards of the output (default: as the input).
    require_all: every pair must receive a label line.

  Returns:
    {'labeled': pairs updated, 'unchanged': pairs without a line}.

  Raises:
    LabelImportError: a bad line (all are reported, nothing is written).
  """
  counts = {pid: n for pid, n in _segment_counts(directory, name)}
  labels = parse_labels(jsonl_path, counts)
  if require_all and len(labels) < len(counts):
    missing = sorted(set(counts) - set(labels))
    raise LabelImportError(jsonl_path, [(0, f"no labels for {len(missing)} pair(s), e.g. {missing[:5]}")])
  src = arrayrecord_io.ShardedSource(directory, name)
  shards = num_shards or src.sidecar["num_shards"]
  stats = {"labeled": 0, "unchanged": 0}
  with arrayrecord_io.ShardedWriter(out_directory, out_name, shards,
                                    metadata=src.sidecar.get("metadata")) as w:
    for i in range(len(src)):
      rec = arrayrecord_io.decode_raw(src[i])
      entry = labels.get(rec.id)
      if entry is None:
        stats["unchanged"] += 1
        w.write(rec)
        continue
      rec = dataclasses.replace(
          rec,
          segment_labels=entry["segment_labels"] if entry["segment_labels"] is not None else rec.segment_labels,
          global_label=entry["global_label"] if entry["global_label"] is not None else rec.global_label,
          labeler=labeler, labeler_params=dict(labeler_params or {}))
      w.write(rec)
      stats["labeled"] += 1
  return stats


def _segment_counts(directory: str, name: str):
  for _, header in arrayrecord_io.iter_headers(directory, name):
    if header["kind"] != "pair":
      raise ValueError(f"{directory}/{name} holds {header['kind']} records, not pairs")
    yield header["fields"]["id"], _num_segments(header)
