"""Datasets written in resumable parts, for jobs that run for hours (pair generation, encoding).

`num_items` items are written as parts of `per_part` items, each part its own ArrayRecord
dataset `<directory>/part-KKKKK-of-NNNNN` that counts as done once its sidecar exists (the sidecar
is written last, atomically). A run that is killed and started again skips the committed parts
and redoes the one it was writing; `merge` joins the parts into the final dataset.

    parts = Parts(directory, num_items, per_part, plan={"seed": 0, ...})
    for k in parts.todo():
      with parts.writer(k) as writer:
        for i in parts.items(k):
          writer.write(make_record(i))
    side = parts.merge(out_dir, name, metadata={...})

`plan` (any JSON-able description of what is written: inputs' hashes, settings) is stored as
`<directory>/plan.json` by the first run; a later run with another plan is refused, naming what
differs, instead of mixing parts of two different runs. With `split_over_processes`, each
process of a multi-host job writes its share of the parts (`distributed.my_items`) and `merge`
waits for all of them; without it no JAX call is made (encoding runs PyTorch and must not start
a JAX backend on its GPU). Paths go through `distributed.path`; ArrayRecord itself writes local
folders only (`arrayrecord_io.check_local`).
"""
from __future__ import annotations

from typing import Any

from densedpo_jax import distributed
from densedpo_jax.data import arrayrecord_io

PLAN_FILE = "plan.json"


class Parts:
  """The parts of one dataset under `directory` (see the module docstring)."""

  def __init__(self, directory: str, num_items: int, per_part: int, *,
               plan: dict[str, Any] | None = None, split_over_processes: bool = False):
    if num_items < 1 or per_part < 1:
      raise ValueError(f"{directory}: {num_items} items in parts of {per_part}; both must be >= 1")
    arrayrecord_io.check_local(directory)
    self.directory, self.num_items, self.per_part = directory, num_items, per_part
    self.num_parts = -(-num_items // per_part)
    self.split_over_processes = split_over_processes
    if plan is not None:
      self._check_plan(plan)

  def _check_plan(self, plan: dict[str, Any]) -> None:
    plan_file = distributed.path(self.directory) / PLAN_FILE
    if plan_file.exists():
      old = distributed.read_json(plan_file)
      if old != plan:
        keys = sorted(set(old) | set(plan), key=str)
        diff = "; ".join(f"{k}: {old.get(k)!r} there, {plan.get(k)!r} now" for k in keys
                         if old.get(k) != plan.get(k))
        raise ValueError(f"{plan_file}: an earlier run wrote these parts from other inputs or "
                         f"settings ({diff}); delete {self.directory} or write elsewhere")
    else:  # A first run, or parts from before plans were stored: this run's plan holds from now.
      distributed.write_json(plan_file, plan)

  def name(self, k: int) -> str:
    return f"part-{k:05d}-of-{self.num_parts:05d}"

  def items(self, k: int) -> range:
    """The item indices of part `k`."""
    return range(k * self.per_part, min((k + 1) * self.per_part, self.num_items))

  def committed(self, k: int) -> bool:
    return distributed.path(arrayrecord_io.sidecar_path(self.directory, self.name(k))).exists()

  def todo(self) -> list[int]:
    """The parts this process still has to write: its share (or all), minus committed ones."""
    mine = (distributed.my_items(self.num_parts) if self.split_over_processes
            else range(self.num_parts))
    return [k for k in mine if not self.committed(k)]

  def writer(self, k: int, metadata: dict[str, Any] | None = None) -> arrayrecord_io.ShardedWriter:
    """The writer of part `k` (one shard); the part is committed when the writer closes."""
    return arrayrecord_io.ShardedWriter(self.directory, self.name(k), num_shards=1,
                                        metadata=metadata)

  def sidecars(self) -> list[dict[str, Any]]:
    """Every part's sidecar (all parts must be committed)."""
    return [arrayrecord_io.read_sidecar(self.directory, self.name(k))
            for k in range(self.num_parts)]

  def merge(self, out_dir: str, name: str, metadata: dict[str, Any] | None = None, *,
            drop_empty: bool = False) -> dict[str, Any]:
    """Joins every part into the dataset `out_dir/name` and returns its sidecar. With
    `split_over_processes`, waits for every process, and process 0 writes it. `drop_empty`
    leaves out parts with no records (every item of them skipped); an empty result is an error."""
    if self.split_over_processes:
      distributed.barrier(f"{self.directory}: every part committed")
    missing = [self.name(k) for k in range(self.num_parts) if not self.committed(k)]
    if missing:  # Another process's parts, invisible here, or a part never written.
      raise FileNotFoundError(
          f"{self.directory}: {len(missing)} of {self.num_parts} parts missing (e.g. "
          f"{missing[0]}); with several processes the folder must be one they all share")
    parts = [(self.directory, self.name(k)) for k in range(self.num_parts)]
    if drop_empty:
      parts = [p for p, side in zip(parts, self.sidecars()) if side["num_records"] > 0]
      if not parts:
        raise ValueError(f"{self.directory}: every part is empty; nothing to merge")
    if not self.split_over_processes:
      return arrayrecord_io.merge_datasets(parts, out_dir, name, metadata=metadata)
    if distributed.is_main():
      arrayrecord_io.merge_datasets(parts, out_dir, name, metadata=metadata)
    distributed.barrier(f"{out_dir}/{name}: merged")
    return arrayrecord_io.read_sidecar(out_dir, name)
