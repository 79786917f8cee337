"""Process helpers of multi-host jobs: start-up, agreement, barriers, process-0 writes, paths.

Every process runs the same program. Work that has one result (a sidecar, a report, a merged
dataset) is written by process 0 after a barrier; work split by process (pair parts, data
shards) is written by its owner. Paths go through `etils.epath`, so a `gs://bucket/run`
workdir is used as it is (never through `os.path.abspath`, which would make it
`<cwd>/gs:/bucket/run`).
"""
from __future__ import annotations

import json
import os
import uuid
from typing import Any, Callable

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """`jax.distributed.initialize`; None arguments are detected (TPU pods, SLURM, ...). Must come
  before any other JAX call. CPU processes talk through gloo (jax's CPU default)."""
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def is_main() -> bool:
  """Whether this process writes the job's single-copy outputs."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process has arrived here (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def broadcast(value: Any) -> Any:
  """Process 0's JSON-able `value` on every process (process 0 keeps its own object); a barrier."""
  if jax.process_count() == 1:
    return value
  data = np.frombuffer(json.dumps(value, default=_plain).encode(), np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
  buf = np.zeros((size,), np.uint8)
  buf[:len(data)] = data[:size]
  shared = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))).decode())
  return value if is_main() else shared


def _plain(x: Any) -> Any:
  """NumPy scalars and arrays as Python numbers and lists (for json.dumps)."""
  return x.tolist() if isinstance(x, (np.generic, np.ndarray)) else float(x)


def on_main(fn: Callable[..., Any], *args, **kwargs) -> Any:
  """`fn(*args, **kwargs)` on process 0 alone, for work whose files must be written once and
  that makes no collective call (no Orbax, no sharded jit); the other processes wait for it
  and get its JSON-able result, or raise when it raised (rather than wait forever)."""
  if jax.process_count() == 1:
    return fn(*args, **kwargs)
  outcome = None
  if is_main():
    try:
      outcome = {"result": fn(*args, **kwargs)}
    except Exception as e:
      broadcast({"error": f"{type(e).__name__}: {e}"})
      raise
  outcome = broadcast(outcome)
  if "error" in outcome:
    raise RuntimeError(f"process 0 failed: {outcome['error']}")
  return outcome["result"]


def my_items(n: int) -> range:
  """The indices of `n` work items that this process takes: every `process_count`-th one."""
  return range(jax.process_index(), n, jax.process_count())


def join_items(mine: dict[int, np.ndarray], n: int, shape: tuple[int, ...], dtype) -> np.ndarray:
  """Every process's results `{index: array of shape}` of its `my_items(n)`, on every process:
  `[n, *shape]` in index order (a collective: every process calls it)."""
  if sorted(mine) != list(my_items(n)):
    raise ValueError(f"join_items: process {jax.process_index()} holds items {sorted(mine)}; "
                     f"expected {list(my_items(n))}")
  count = jax.process_count()
  local = np.zeros((-(-n // count),) + tuple(shape), dtype)  # Same shape on every process.
  for i, value in mine.items():
    local[i // count] = value
  if count == 1:
    return local
  gathered = np.asarray(multihost_utils.process_allgather(local))  # [processes, per process, ...]
  return np.stack([gathered[i % count, i // count] for i in range(n)])


class StopVote:
  """Agreement of all processes on a local stop flag, read one step late so the host never
  waits for the devices: `poll(flag)` dispatches this step's vote and returns the last one.

  A single process needs no vote: `poll` returns `flag` itself.
  """

  def __init__(self, mesh: Mesh):
    self._mesh, self._pending = mesh, None
    self._max = jax.jit(lambda x: x.max(), out_shardings=NamedSharding(mesh, P()))

  def poll(self, flag: bool) -> bool:
    if jax.process_count() == 1:
      return bool(flag)
    agreed = self._pending is not None and bool(self._pending.addressable_data(0))
    sharding = NamedSharding(self._mesh, P(self._mesh.axis_names))  # One flag a device.
    local = np.full((len(self._mesh.local_devices),), flag, np.int32)
    self._pending = self._max(jax.make_array_from_process_local_data(sharding, local))
    return agreed


# Paths.


def path(p: str | os.PathLike) -> epath.Path:
  """`p` as an `epath.Path`: local paths absolute, URLs (`gs://...`) untouched."""
  p = epath.Path(p)
  return p if "://" in os.fspath(p) else epath.Path(os.path.abspath(p))


def makedirs(p: str | os.PathLike) -> epath.Path:
  out = path(p)
  out.mkdir(parents=True, exist_ok=True)
  return out


def write_text(p: str | os.PathLike, text: str) -> None:
  """Writes `text` to `p` through a temporary name: readers never see half a file, and a failed
  write (a full disk) leaves `p` as it was and no temporary behind. Local files are synced to
  disk before the rename."""
  out = path(p)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    if "://" in os.fspath(tmp):
      tmp.write_text(text)
    else:
      with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(out)
  except BaseException:
    try:
      tmp.unlink(missing_ok=True)
    except OSError:
      pass
    raise


def write_json(p: str | os.PathLike, value: Any) -> None:
  write_text(p, json.dumps(value, indent=1, default=_plain))


def read_json(p: str | os.PathLike) -> Any:
  return json.loads(path(p).read_text())
