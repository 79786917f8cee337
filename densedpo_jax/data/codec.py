"""Exact, dependency-free byte encoding of VideoRecord / PairRecord.

Layout of one encoded record (all integers little-endian):

    b"DDPR" | u16 schema version | u16 0 | u32 header length n | n bytes of JSON header
    | zero padding to a multiple of 64 | array 1 bytes | padding | array 2 bytes | ...

The JSON header holds the record kind, every scalar field (ints, floats with
NaN written as `NaN`, strings, metadata dicts) and, per array, `[dtype, shape,
offset]` (offset from the start of the record, a multiple of 64). Arrays are
raw C-order bytes, so decoding is `np.frombuffer` (no copy) and the round trip
is bit-exact for every dtype, bfloat16 included (via ml_dtypes, which jax
ships). Latents are cast to the record's `latent_dtype` when encoded: storing
bfloat16 or float16 halves a latent's bytes.

Decoded arrays are read-only views of the input bytes; copy them to modify.
`read_header` parses only the JSON part: labels, ids and shapes of a record can
be read without touching its latents (used by summaries and label import).
"""
from __future__ import annotations

import dataclasses
import json
import math
import struct
from typing import Any, Optional

import numpy as np

from densedpo_jax.data import schema

MAGIC = b"DDPR"
_PREFIX = struct.Struct("<4sHHI")
_ALIGN = 64
_ARRAY_DTYPES: dict[str, np.dtype] = {
    **schema.LATENT_DTYPES,
    "bool": np.dtype(np.bool_),
    "int8": np.dtype(np.int8),
    "int32": np.dtype(np.int32),
}


def _align(n: int) -> int:
  return -(-n // _ALIGN) * _ALIGN


def _dtype_name(dtype: np.dtype, field: str) -> str:
  for name, d in _ARRAY_DTYPES.items():
    if d == dtype:
      return name
  raise schema.RecordError(field, f"dtype {dtype} cannot be stored; supported: {sorted(_ARRAY_DTYPES)}")


def _plain(value: Any) -> Any:
  """NumPy scalars -> Python scalars, so json can write them."""
  if isinstance(value, np.bool_):
    return bool(value)
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.floating):
    return float(value)
  return value


def encode(rec: schema.Record, validate: bool = True) -> bytes:
  """Serialises a record; latents are cast to `rec.latent_dtype` first.

  Raises:
    RecordError: the record is malformed (when `validate`) or holds a value that
      cannot be written (field named).
  """
  if validate:
    schema.validate(rec)
  fields, arrays = {}, {}
  for f in dataclasses.fields(rec):
    value = getattr(rec, f.name)
    if f.name in rec.ARRAYS:
      if value is None:
        continue
      x = np.ascontiguousarray(value)
      if f.name.startswith("latent") or f.name in ("cond_latent", "gt_latent"):
        x = np.ascontiguousarray(x.astype(schema.LATENT_DTYPES[rec.latent_dtype], copy=False))
      arrays[f.name] = x
    else:
      fields[f.name] = _plain(value)
  specs = {}
  header = {"kind": rec.KIND, "fields": fields, "arrays": specs}
  # The header's own length moves the array offsets: fix the offsets for a
  # generous header size estimate, then lay the arrays out after it.
  try:
    probe = json.dumps({**header, "arrays": {k: [_dtype_name(x.dtype, k), list(x.shape), 10**15]
                                            for k, x in arrays.items()}})
  except TypeError as e:
    bad = next(k for k, v in fields.items() if not _json_ok(v))
    raise schema.RecordError(bad, f"is not JSON-serialisable: {e}") from None
  offset = _align(_PREFIX.size + len(probe.encode("utf-8")))
  for name, x in arrays.items():
    specs[name] = [_dtype_name(x.dtype, name), list(x.shape), offset]
    offset = _align(offset + x.nbytes)
  head = json.dumps(header).encode("utf-8")
  out = bytearray(offset)
  _PREFIX.pack_into(out, 0, MAGIC, schema.SCHEMA_VERSION, 0, len(head))
  out[_PREFIX.size:_PREFIX.size + len(head)] = head
  for name, x in arrays.items():
    start = specs[name][2]
    np.frombuffer(out, np.uint8, x.nbytes, start)[:] = x.reshape(-1).view(np.uint8)
  return bytes(out)


def _json_ok(value: Any) -> bool:
  try:
    json.dumps(value)
    return True
  except TypeError:
    return False


def read_header(data: bytes, path: Optional[str] = None, index: Optional[int] = None) -> dict[str, Any]:
  """Parses the JSON header: `{'kind', 'fields', 'arrays': {name: [dtype, shape, offset]}}`.

  Raises:
    RecordError: not a record of this format (field 'header').
  """
  if len(data) < _PREFIX.size:
    raise schema.RecordError("header", f"{len(data)} bytes is too short for a record", path, index)
  magic, version, _, n = _PREFIX.unpack_from(data, 0)
  if magic != MAGIC:
    raise schema.RecordError("header", f"bad magic {magic!r}, expected {MAGIC!r}", path, index)
  if version > schema.SCHEMA_VERSION:
    raise schema.RecordError("header", f"schema version {version} is newer than this reader's "
                             f"{schema.SCHEMA_VERSION}", path, index)
  try:
    header = json.loads(bytes(data[_PREFIX.size:_PREFIX.size + n]))
  except ValueError as e:
    raise schema.RecordError("header", f"unreadable JSON header ({e})", path, index) from None
  if header.get("kind") not in schema.RECORD_TYPES:
    raise schema.RecordError("kind", f"unknown record kind {header.get('kind')!r}", path, index)
  return header


def read_array(data: bytes, header: dict[str, Any], name: str, path: Optional[str] = None,
               index: Optional[int] = None) -> Optional[np.ndarray]:
  """One array of an encoded record, given its parsed header; None if absent."""
  spec = header["arrays"].get(name)
  if spec is None:
    return None
  try:
    dtype_name, shape, offset = spec
    return np.frombuffer(data, _ARRAY_DTYPES[dtype_name], math.prod(shape), offset).reshape(shape)
  except (KeyError, ValueError, TypeError) as e:
    raise schema.RecordError(name, f"bad array spec {spec!r} ({e})", path, index) from None


def decode(data: bytes, path: Optional[str] = None, index: Optional[int] = None,
           validate: bool = True) -> schema.Record:
  """Bytes -> record (arrays are read-only views of `data`).

  Args:
    data: one encoded record.
    path, index: where it came from, for error messages.
    validate: run schema validation on the result.

  Raises:
    RecordError: naming `path`, `index` and the offending field.
  """
  header = read_header(data, path, index)
  cls = schema.RECORD_TYPES[header["kind"]]
  names = {f.name for f in dataclasses.fields(cls)}
  kwargs = {}
  for name, value in header["fields"].items():
    if name not in names:
      raise schema.RecordError(name, f"unknown field for a {header['kind']} record", path, index)
    kwargs[name] = value
  for name in header["arrays"]:
    if name not in cls.ARRAYS:
      raise schema.RecordError(name, f"unknown array for a {header['kind']} record", path, index)
    kwargs[name] = read_array(data, header, name, path, index)
  try:
    rec = cls(**kwargs)
  except TypeError as e:
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in kwargs and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    raise schema.RecordError(missing[0] if missing else "fields", str(e), path, index) from None
  if validate:
    schema.validate(rec, path, index)
  return rec
