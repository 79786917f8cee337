"""Orbax checkpoints of a run: train state, data-iterator state and exportable params.

One `CheckpointManager` step holds three items:
  state    the `TrainState` (trainable tree, optimiser state, step, EMA)
  iter     the Grain iterator state, so a resumed run sees exactly the batches it would have seen
  params   the weights to sample from: the EMA (or raw) params of pretraining, or the base with
           the LoRA adapter folded in for SFT / DPO. `config.init_from` reads this item
           (`model/pretrained.read_params`).
Saves are asynchronous; a step directory only appears once its save has finished, so a crash
mid-save leaves the previous checkpoint intact.

The iterator state is one file a process (`iter/process_<i>-of-<n>.json`): each process reads
its own share of the data. A checkpoint records its process count (`custom_metadata`) and
restores only on the same count; another count is refused with a message naming both.
"""
from __future__ import annotations

import re
import shutil
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from densedpo_jax import console, distributed


ITEMS = ("state", "iter", "params")


class ProcessCountError(console.JobError, ValueError):
  """A checkpoint's data-iterator state was saved by another number of processes."""


class CheckpointWriteError(console.JobError, OSError):
  """A checkpoint could not be written: the message says what, where and how much space is left."""
  hard_exit = True  # Orbax's background writes would print on while Python shuts down.


# What a failed write's text says (tensorstore reports errno as os_error_code), in words.
WRITE_FAILURES = (("os_error_code='28'", "no space left on the device (ENOSPC)"),
                  ("No space left", "no space left on the device (ENOSPC)"),
                  ("os_error_code='122'", "the disk quota is exceeded (EDQUOT)"),
                  ("os_error_code='27'", "a file passed the size limit (EFBIG)"),
                  ("File too large", "a file passed the size limit (EFBIG)"))


def _gib(n: int) -> str:
  return f"{n / 2 ** 30:.2f} GiB"


def abstract_like(tree: Any, shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s carrying `shardings`: a restore target on the current mesh."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class RunCheckpointer:
  """Saves and restores the checkpoints of one workdir (`<workdir>/checkpoints/<step>`)."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = distributed.path(workdir) / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, iterator: Any, params: Any, force: bool = False) -> bool:
    """Starts saving `step` (finishing the previous save first); `CheckpointWriteError` when a
    write fails (this step's, or the previous one's surfacing here)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              iter=grain.checkpoint.CheckpointSave(iterator),
                              params=ocp.args.StandardSave(params))
    try:
      return self.manager.save(step, args=args, force=force,
                               custom_metadata={"process_count": jax.process_count()})
    except Exception as e:  # noqa: BLE001 (every failure here is a failed write; chained)
      raise self.write_error(e, step) from e

  def write_error(self, error: Exception, step: int | None) -> CheckpointWriteError:
    """One line: what failed, where, the free space there and the complete checkpoints kept."""
    text = str(error)
    reason = next((why for needle, why in WRITE_FAILURES if needle in text),
                  f"{type(error).__name__}: {text[:200]}")
    space = ""
    if "://" not in str(self.directory):
      try:
        usage = shutil.disk_usage(self.directory if self.directory.exists() else
                                  self.directory.parent)
        space = f"; {_gib(usage.free)} free of {_gib(usage.total)} there"
      except OSError:
        pass
    try:
      kept = sorted(self.manager.all_steps(read=True))  # Finished saves only.
    except Exception:  # noqa: BLE001 (a listing error must not hide the write error)
      kept = []
    when = f" at step {step}" if step is not None else " while finishing the last save"
    resume = (f"complete checkpoints kept: {kept}; free space and rerun to resume from step "
              f"{kept[-1]}" if kept else "no complete checkpoint yet; free space and rerun")
    return CheckpointWriteError(
        f"writing a checkpoint to {self.directory} failed{when}: {reason}{space}; {resume}.")

  def restore(self, step: int, abstract_state: Any, iterator: Any) -> Any:
    """Restores the state onto the shardings in `abstract_state`; `iterator` is updated in place.
    Raises ProcessCountError when another number of processes saved `step`."""
    _check_process_count(self.manager, self.directory, step)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        iter=grain.checkpoint.CheckpointRestore(iterator)))
    return restored["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    """Finishes the save in flight; `CheckpointWriteError` if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self.write_error(e, None) from e
    finally:
      self.manager.close()


def saved_process_count(manager: ocp.CheckpointManager, directory: epath.Path,
                        step: int) -> int | None:
  """Processes that saved `step`: its metadata, else its iterator files (older checkpoints)."""
  count = (manager.metadata(step).custom_metadata or {}).get("process_count")
  if count is None:
    names = [p.name for p in (directory / str(step) / "iter").glob("process_*-of-*.json")]
    counts = {int(m.group(1)) for m in map(re.compile(r"-of-(\d+)\.json$").search, names) if m}
    count = counts.pop() if len(counts) == 1 else None
  return None if count is None else int(count)


def _check_process_count(manager: ocp.CheckpointManager, directory: epath.Path, step: int) -> None:
  saved, now = saved_process_count(manager, directory, step), jax.process_count()
  if saved is not None and saved != now:
    raise ProcessCountError(
        f"checkpoint {directory / str(step)} was saved by {saved} processes; this run has {now}. "
        f"Its data-iterator state is one file a process, so it resumes only on {saved} "
        f"processes: rerun with {saved} processes, or train in a new workdir.")


def check_resumable(workdir: str) -> None:
  """ProcessCountError when the latest checkpoint of `workdir` was saved by another number of
  processes than run now: a cheap look before anything is compiled."""
  directory = distributed.path(workdir) / "checkpoints"
  if not directory.is_dir():
    return
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True, create=False, save_interval_steps=0),
                                  item_names=ITEMS)
  try:
    step = manager.latest_step()
    if step is not None:
      _check_process_count(manager, directory, step)
  finally:
    manager.close()
