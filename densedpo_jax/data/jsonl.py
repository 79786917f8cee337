"""JSON Lines files that people and later stages depend on: read with `file:line` errors, appended
one whole record at a time.

    for n, obj in jsonl.read_objects(path): ...       # JsonlError names path:line on bad bytes/JSON
    jsonl.append(path, {"id": "p0", ...})            # all of the line or none of it, fsync'd
    jsonl.write_all(path, objects)                   # a whole file, renamed into place
    note = jsonl.set_aside_partial_line(path)        # after a crash mid-write: the fragment moves
                                                     # to `<path>.partial`, `note` says where

A failed append (a full disk, a dead device) truncates the file back to its last complete line
before the error reaches the caller, so the next append never lands after a fragment.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Iterator, Optional

from densedpo_jax import console, distributed


class JsonlError(console.JobError, ValueError):
  """A line that cannot be read: the message starts with `path:line:`."""

  def __init__(self, path: str, line: int, message: str):
    super().__init__(f"{path}:{line}: {message}")
    self.path, self.line, self.message = path, line, message


def read_lines(path: str) -> Iterator[tuple[int, str]]:
  """`(line number from 1, text)` of every non-blank line; undecodable bytes raise `JsonlError`."""
  with open(path, "rb") as f:
    for n, raw in enumerate(f, start=1):
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise JsonlError(path, n, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                  f"{e.start + 1})") from None
      if text.strip():
        yield n, text


def parse_line(path: str, n: int, text: str) -> Any:
  """One line's JSON value; `JsonlError` naming `path:n` when it is not JSON (or nests too deep)."""
  try:
    return json.loads(text)
  except (ValueError, RecursionError) as e:
    raise JsonlError(path, n, f"not valid JSON ({str(e)[:120]})") from None


def read_objects(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """`(line number, object)` of every non-blank line; each line must hold a JSON object."""
  for n, text in read_lines(path):
    obj = parse_line(path, n, text)
    if not isinstance(obj, dict):
      raise JsonlError(path, n, f"expected a JSON object, got {type(obj).__name__}")
    yield n, obj


def append(path: str, obj: Any) -> None:
  """Appends `obj` as one line, flushed and fsync'd. On any write error the file is cut back to
  its previous length (no fragment stays) and the error is raised, naming `path`. Refuses to
  append after a partial last line (see `set_aside_partial_line`)."""
  data = (json.dumps(obj, allow_nan=False) + "\n").encode("utf-8")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # Unbuffered: no late flush.
  try:
    start = os.lseek(fd, 0, os.SEEK_END)
    if start and os.pread(fd, 1, start - 1) != b"\n":
      raise JsonlError(path, _count_lines(path), "the last line is incomplete; restart the tool "
                                                 "that writes it to set the fragment aside")
    try:
      written = 0
      while written < len(data):
        written += os.write(fd, data[written:])
      os.fsync(fd)
    except OSError as e:
      os.ftruncate(fd, start)
      os.fsync(fd)
      raise OSError(e.errno, f"{path}: writing one line of {len(data)} bytes failed "
                             f"({e.strerror or e}); the file is back to {start} bytes") from e
  finally:
    os.close(fd)


def write_all(path: str, objects: Iterable[Any]) -> int:
  """Writes one line an object through a temporary file renamed into place: readers see the old
  file or the whole new one, never a part. Returns the number of lines."""
  lines = [json.dumps(obj, allow_nan=False) + "\n" for obj in objects]
  distributed.write_text(path, "".join(lines))
  return len(lines)


def set_aside_partial_line(path: str) -> Optional[str]:
  """If `path` ends in a line without a newline (a write cut short), moves that fragment to
  `<path>.partial` (appended, so nothing is lost), truncates `path` to its last complete line and
  returns a one-line note naming `path:line`; None when the file is whole or absent."""
  if not os.path.exists(path) or not os.path.getsize(path):
    return None
  with open(path, "rb+") as f:
    data = f.read()
    if data.endswith(b"\n"):
      return None
    keep = data.rfind(b"\n") + 1
    line = data.count(b"\n", 0, keep) + 1
    try:  # A whole record written without its newline (by hand, by another tool): keep it.
      whole = isinstance(json.loads(data[keep:]), dict)
    except (ValueError, RecursionError):
      whole = False
    if whole:
      f.write(b"\n")
      f.flush()
      os.fsync(f.fileno())
      return None
    with open(path + ".partial", "ab") as aside:
      aside.write(data[keep:] + b"\n")
      aside.flush()
      os.fsync(aside.fileno())
    f.truncate(keep)
    f.flush()
    os.fsync(f.fileno())
  return (f"{path}:{line}: an incomplete last line ({len(data) - keep} bytes, a write cut short) "
          f"was moved to {path}.partial")


def _count_lines(path: str) -> int:
  with open(path, "rb") as f:
    return sum(1 for _ in f)
