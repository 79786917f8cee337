"""Sharded ArrayRecord datasets of records: atomic writing, random-access reading.

A dataset `name` in `directory` is

    directory/name-00000-of-00008.array_record ... name-00007-of-00008.array_record
    directory/name.json        the sidecar: schema version, kind, shapes, counts

The sidecar is written last, so it is the commit marker: a dataset without one is
incomplete and readers refuse it. Shards are first written under hidden
temporary names and renamed only when every record was written and every writer
closed; an exception while writing deletes the temporaries and leaves no final
file (and an existing dataset of the same name untouched).

Records go to shards round-robin (record i to shard i % num_shards), so shards
stay balanced for a stream of unknown length. Global index k of the reader is
shard-major: the records of shard 0, then shard 1, ...

    with ShardedWriter(dir, "pairs", num_shards=8) as w:
      for rec in records:
        w.write(rec)
    src = ShardedSource(dir, "pairs")        # grain random-access data source
    rec = decode_raw(src[17])                # RecordError names file, index, field
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import uuid
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
from array_record.python import array_record_data_source
from array_record.python import array_record_module
from absl import logging

from densedpo_jax import distributed
from densedpo_jax.data import codec
from densedpo_jax.data import schema

FORMAT = "densedpo_jax.records"
DEFAULT_WRITER_OPTIONS = "group_size:1,uncompressed"  # group_size 1: fast random access


def shard_filename(name: str, index: int, num_shards: int) -> str:
  """`name-00003-of-00008.array_record`."""
  return f"{name}-{index:05d}-of-{num_shards:05d}.array_record"


def sidecar_path(directory: str, name: str) -> str:
  return os.path.join(directory, f"{name}.json")


def check_local(directory: str) -> str:
  """`directory`, when it is a local path; a ValueError for a URL (`gs://...`): the open-source
  ArrayRecord reader and writer open local files only (riegeli's file descriptors)."""
  if "://" in os.fspath(directory):
    raise ValueError(f"{directory}: ArrayRecord datasets are read and written on local paths "
                     "only; mount the bucket (e.g. gcsfuse) and pass the mounted path")
  return directory


class ShardedWriter:
  """Writes records to `num_shards` ArrayRecord shards, atomically (see module doc).

  Every record is validated, and must match the first record's kind, latent and
  text shapes, latent dtype and timing metadata (the sidecar describes them).

  Args:
    directory: output folder (created if missing).
    name: dataset name (file prefix).
    num_shards: shards to write, >= 1.
    writer_options: ArrayRecord writer options (keep group_size:1 for grain).
    metadata: extra JSON-serialisable entries for the sidecar.
  """

  def __init__(self, directory: str, name: str, num_shards: int = 8,
               writer_options: str = DEFAULT_WRITER_OPTIONS, metadata: Optional[dict] = None):
    if num_shards < 1:
      raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    os.makedirs(check_local(directory), exist_ok=True)
    self.directory, self.name, self.num_shards = directory, name, num_shards
    self.writer_options, self.metadata = writer_options, dict(metadata or {})
    self.files = [shard_filename(name, i, num_shards) for i in range(num_shards)]
    tag = uuid.uuid4().hex[:8]
    self._tmp = [os.path.join(directory, f".{f}.tmp-{tag}") for f in self.files]
    self._writers = [array_record_module.ArrayRecordWriter(p, writer_options) for p in self._tmp]
    self._counts = [0] * num_shards
    self._signature: Optional[dict] = None
    self._ids: set[str] = set()
    self._closed = False

  @property
  def num_written(self) -> int:
    return sum(self._counts)

  def write(self, rec: schema.Record) -> None:
    """Validates, encodes and appends one record (to shard `num_written % num_shards`).

    Raises:
      RecordError: naming the shard file, the record's position in it and the
        field (malformed, duplicate id, or shapes unlike the first record's).
    """
    k = self.num_written % self.num_shards
    where = (self.files[k], self._counts[k])
    try:
      schema.validate(rec)
      sig = schema.shape_signature(rec)
    except schema.RecordError as e:
      raise e.at(*where) from None
    if self._signature is None:
      self._signature = sig
    for key, value in sig.items():
      if value != self._signature[key]:
        raise schema.RecordError(key, f"{value!r} differs from the dataset's {self._signature[key]!r} "
                                 "(all records of a dataset share shapes and metadata)", *where)
    if rec.id in self._ids:
      raise schema.RecordError("id", f"duplicate id {rec.id!r} (ids are unique within a dataset)", *where)
    self._ids.add(rec.id)
    self._writers[k].write(codec.encode(rec, validate=False))
    self._counts[k] += 1

  def close(self) -> dict[str, Any]:
    """Commits: closes the shards, renames them into place, writes the sidecar. Returns it."""
    if self._closed:
      raise RuntimeError("ShardedWriter already closed")
    for w in self._writers:
      w.close()
    self._closed = True
    sidecar = {
        "format": FORMAT,
        "schema_version": schema.SCHEMA_VERSION,
        "name": self.name,
        "num_records": self.num_written,
        "num_shards": self.num_shards,
        "shards": [{"file": f, "num_records": n} for f, n in zip(self.files, self._counts)],
        "signature": self._signature,
        "writer_options": self.writer_options,
        "metadata": self.metadata,
    }
    # Un-commit any older dataset of the same name before its shards are replaced.
    old = sidecar_path(self.directory, self.name)
    if os.path.exists(old):
      old_files = [s["file"] for s in _load_json(old).get("shards", [])]
      os.remove(old)
      for f in set(old_files) - set(self.files):
        if os.path.exists(os.path.join(self.directory, f)):
          os.remove(os.path.join(self.directory, f))
    for tmp, f in zip(self._tmp, self.files):
      os.replace(tmp, os.path.join(self.directory, f))
    distributed.write_text(old, json.dumps(sidecar, indent=1))
    self.sidecar = sidecar
    return sidecar

  def abort(self) -> None:
    """Discards everything written so far (no file of this writer remains)."""
    if not self._closed:
      for w in self._writers:
        try:
          w.close()
        except Exception:  # pylint: disable=broad-except
          pass
      self._closed = True
    for tmp in self._tmp:
      if os.path.exists(tmp):
        os.remove(tmp)

  def __enter__(self) -> "ShardedWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def write_records(records: Iterable[schema.Record], directory: str, name: str, num_shards: int = 8,
                  **kwargs) -> dict[str, Any]:
  """Writes an iterable of records as one dataset (atomically); returns the sidecar."""
  with ShardedWriter(directory, name, num_shards, **kwargs) as w:
    for rec in records:
      w.write(rec)
  return w.sidecar


def merge_datasets(parts: Sequence[tuple[str, str]], directory: str, name: str,
                   metadata: Optional[dict] = None) -> dict[str, Any]:
  """Joins complete datasets `[(part_directory, part_name), ...]`, each inside `directory`, into
  one dataset `name` by writing a single sidecar whose shard entries are paths relative to
  `directory`: nothing is copied or moved, so a crash leaves either the parts or the whole
  (for outputs committed in independent parts, e.g. resumable pair generation).

  Raises:
    ValueError: when a part lies outside `directory` or the parts' signatures differ.
  """
  check_local(directory)
  sides = [read_sidecar(d, n) for d, n in parts]
  if not sides:
    raise ValueError("merge_datasets: no parts to merge")
  shards = []
  for (d, n), side in zip(parts, sides):
    if side["signature"] != sides[0]["signature"]:
      raise ValueError(f"merge_datasets: {sidecar_path(d, n)} has signature {side['signature']}, "
                       f"unlike {sides[0]['signature']} of the first part")
    rel = os.path.relpath(os.path.abspath(d), os.path.abspath(directory))
    if rel.startswith(".."):
      raise ValueError(f"merge_datasets: part {d} is not inside {directory}")
    shards += [{"file": os.path.normpath(os.path.join(rel, s["file"])),
                "num_records": s["num_records"]} for s in side["shards"]]
  sidecar = dict(sides[0], name=name, num_records=sum(s["num_records"] for s in shards),
                 num_shards=len(shards), shards=shards, metadata=dict(metadata or {}))
  os.makedirs(directory, exist_ok=True)
  distributed.write_text(sidecar_path(directory, name), json.dumps(sidecar, indent=1))
  return sidecar


def _load_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def read_sidecar(directory: str, name: str) -> dict[str, Any]:
  """The sidecar of a complete dataset; FileNotFoundError when there is none."""
  path = sidecar_path(check_local(directory), name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no complete dataset {name!r} in {directory}: {path} is missing "
                            "(a dataset whose writer did not finish has no sidecar)")
  side = _load_json(path)
  if side.get("format") != FORMAT:
    raise ValueError(f"{path}: not a {FORMAT} sidecar")
  if side["schema_version"] > schema.SCHEMA_VERSION:
    raise ValueError(f"{path}: schema version {side['schema_version']} is newer than this "
                     f"reader's {schema.SCHEMA_VERSION}")
  return side


@dataclasses.dataclass(frozen=True)
class RawRecord:
  """One undecoded element of a source, with its provenance for error messages.

  Attributes:
    data: encoded record bytes (codec format), a dict of features (TFDS), or None for an
      unreadable record that the source was told to skip.
    path: file (or dataset) it came from.
    position: index of the record within `path`.
  """
  data: Union[bytes, dict, None]
  path: str
  position: int


class ShardedSource:
  """Random-access source over a dataset's shards, yielding `RawRecord`s.

  Satisfies grain's RandomAccessDataSource protocol (`__len__`, `__getitem__`,
  `__getitems__`), is thread-safe and picklable (for grain worker processes).
  Decoding is left to the pipeline (`decode_raw`), after shuffling and sharding.

  Unreadable bytes (a corrupt chunk, a truncated shard) raise `RecordError` naming the shard,
  the record and the shard's record range. With `max_unreadable_share > 0` such records are
  skipped instead (`RawRecord.data is None`, dropped by the pipeline) and counted in
  `unreadable`, until they exceed that share of the dataset.
  """

  def __init__(self, directory: str, name: str, max_unreadable_share: float = 0.0):
    self.directory, self.name = directory, name
    self.max_unreadable_share = float(max_unreadable_share)
    self.sidecar = read_sidecar(directory, name)
    self.files = [os.path.join(directory, s["file"]) for s in self.sidecar["shards"]]
    counts = [s["num_records"] for s in self.sidecar["shards"]]
    self._length = int(sum(counts))
    # ArrayRecord's source refuses empty files: index only the non-empty shards.
    self._files = [f for f, n in zip(self.files, counts) if n]
    self._counts = [n for n in counts if n]
    self._starts = np.cumsum([0] + self._counts[:-1])
    self.unreadable: dict[int, str] = {}  # Global index -> why, for records skipped so far.
    self._lock = threading.Lock()
    self._readers = [self._open(k) for k in range(len(self._files))]

  def __getstate__(self) -> dict:  # Picklable for grain worker processes: reopen there.
    return {"directory": self.directory, "name": self.name,
            "max_unreadable_share": self.max_unreadable_share}

  def __setstate__(self, state: dict) -> None:
    self.__init__(**state)

  def _open(self, k: int):
    """The reader of non-empty shard k, or None (skip mode) when it cannot be opened."""
    try:
      reader = array_record_data_source.ArrayRecordDataSource([self._files[k]])
      found = len(reader)
    except Exception as e:  # pylint: disable=broad-except  (riegeli raises bare RuntimeErrors)
      self._unreadable(range(self._starts[k], self._starts[k] + self._counts[k]), k, None, e)
      return None
    if found != self._counts[k]:
      raise ValueError(f"{sidecar_path(self.directory, self.name)}: the sidecar counts "
                       f"{self._counts[k]} records in {self._files[k]}, the shard holds {found}")
    return reader

  def _unreadable(self, indices, k: int, position: Optional[int], error: Exception) -> None:
    """Counts `indices` as skipped, or raises RecordError when skipping is off or over budget."""
    first, last = int(self._starts[k]), int(self._starts[k] + self._counts[k] - 1)
    where = (f"unreadable ({type(error).__name__}: {str(error) or 'cannot open: truncated?'}); "
             f"the shard holds records {first}-{last} of {self.name!r}")
    if self.max_unreadable_share <= 0:
      raise schema.RecordError("<bytes>", where + "; set config.data.max_unreadable_share to skip "
                               "unreadable records", os.path.basename(self._files[k]), position)
    with self._lock:
      self.unreadable.update({int(i): where for i in indices})
      share = len(self.unreadable) / max(self._length, 1)
    logging.warning("%s, record %s: %s; skipped (%d unreadable so far)",
                    self._files[k], "?" if position is None else position, where,
                    len(self.unreadable))
    if share > self.max_unreadable_share:
      raise schema.RecordError("<bytes>", f"{len(self.unreadable)} unreadable records "
                               f"({share:.1%}) exceed max_unreadable_share = "
                               f"{self.max_unreadable_share:.1%}; last: {where}",
                               os.path.basename(self._files[k]), position)

  @property
  def kind(self) -> str:
    return (self.sidecar.get("signature") or {}).get("kind", "")

  def __len__(self) -> int:
    return self._length

  def _shard_of(self, index: int) -> tuple[int, int]:
    k = int(np.searchsorted(self._starts, index, side="right") - 1)
    return k, int(index - self._starts[k])

  def locate(self, index: int) -> tuple[str, int]:
    """Global index -> (shard file name, position in that shard)."""
    k, position = self._shard_of(index)
    return os.path.basename(self._files[k]), position

  def __getitem__(self, index) -> RawRecord:
    index = int(index)
    if not 0 <= index < self._length:
      raise IndexError(f"index {index} out of range for {self._length} records of {self.name!r}")
    k, position = self._shard_of(index)
    name = os.path.basename(self._files[k])
    if self._readers[k] is None:  # Skipped when opened; its records were counted then.
      return RawRecord(None, name, position)
    try:
      return RawRecord(self._readers[k][position], name, position)
    except Exception as e:  # pylint: disable=broad-except  (riegeli raises bare RuntimeErrors)
      self._unreadable([index], k, position, e)
      return RawRecord(None, name, position)

  def __getitems__(self, indices: Sequence[int]) -> list[RawRecord]:
    return [self[i] for i in indices]

  def __repr__(self) -> str:
    return f"ShardedSource({self.directory!r}, {self.name!r}, {self._length} records)"


def decode_raw(raw: RawRecord, validate: bool = True) -> Optional[schema.Record]:
  """RawRecord -> validated record (None for a skipped unreadable one); errors name the shard
  file, position and field."""
  if raw.data is None:
    return None
  if isinstance(raw.data, dict):
    return schema_from_features(raw.data, raw.path, raw.position, validate)
  return codec.decode(raw.data, raw.path, raw.position, validate)


def schema_from_features(features: dict, path: str, position: int, validate: bool = True) -> schema.Record:
  """A dict of record fields (e.g. a TFDS example) -> VideoRecord or PairRecord."""
  kind = "pair" if "latent_a" in features else "video"
  cls = schema.RECORD_TYPES[kind]
  names = {f.name for f in dataclasses.fields(cls)}
  kwargs = {}
  for key, value in features.items():
    if key not in names:
      continue
    if isinstance(value, bytes):
      value = value.decode("utf-8")
    elif isinstance(value, np.ndarray) and value.ndim == 0 and key not in cls.ARRAYS:
      value = value.item()
      value = value.decode("utf-8") if isinstance(value, bytes) else value
    if key in ("metadata", "labeler_params") and isinstance(value, str):
      value = json.loads(value) if value else {}
    kwargs[key] = value
  try:
    rec = cls(**kwargs)
  except TypeError as e:
    raise schema.RecordError("fields", str(e), path, position) from None
  return schema.validate(rec, path, position) if validate else rec


def iter_records(directory: str, name: str, validate: bool = True) -> Iterator[schema.Record]:
  """Every record of a dataset in index order, decoded."""
  src = ShardedSource(directory, name)
  for i in range(len(src)):
    yield decode_raw(src[i], validate)


def iter_headers(directory: str, name: str) -> Iterator[tuple[RawRecord, dict]]:
  """`(raw, header)` for every record, parsing only headers (latents untouched)."""
  src = ShardedSource(directory, name)
  for i in range(len(src)):
    raw = src[i]
    yield raw, codec.read_header(raw.data, raw.path, raw.position)
