"""Orbax checkpoints of a run: train state, data-iterator state and exportable params.

One `CheckpointManager` step holds three items:
  state    the `TrainState` (trainable tree, optimiser state, step, EMA)
  iter     the Grain iterator state, so a resumed run sees exactly the batches it would have seen
  params   the weights to sample from: the EMA (or raw) params of pretraining, or the base with
           the LoRA adapter folded in for SFT / DPO. `config.init_from` reads this item.
Saves are asynchronous; a step directory only appears once its save has finished, so a crash
mid-save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


def abstract_like(tree: Any, shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s carrying `shardings`: a restore target on the current mesh."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class RunCheckpointer:
  """Saves and restores the checkpoints of one workdir (`<workdir>/checkpoints/<step>`)."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "iter", "params"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, iterator: Any, params: Any, force: bool = False) -> bool:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              iter=grain.checkpoint.CheckpointSave(iterator),
                              params=ocp.args.StandardSave(params))
    return self.manager.save(step, args=args, force=force)

  def restore(self, step: int, abstract_state: Any, iterator: Any) -> Any:
    """Restores the state onto the shardings in `abstract_state`; `iterator` is updated in place."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        iter=grain.checkpoint.CheckpointRestore(iterator)))
    return restored["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def load_params(path: str, abstract_params: Any, step: int | None = None) -> Any:
  """Reads the `params` item of a run's checkpoint onto the shardings of `abstract_params`.

  Args:
    path: a workdir, its `checkpoints` folder, or one step folder (`.../checkpoints/1200`).
    abstract_params: `jax.ShapeDtypeStruct` tree (with shardings) of the expected params.
    step: which step; default the latest.
  """
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "params")) and os.path.basename(path).isdigit():
    step, path = int(os.path.basename(path)), os.path.dirname(path)
  elif os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"init_from: no checkpoint directory at {path}")
  manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_names=("params",))
  step = manager.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    raise FileNotFoundError(f"init_from: no checkpoint step {step} under {path} "
                            f"(found steps {list(manager.all_steps())})")
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))
  except (ValueError, KeyError) as e:
    raise ValueError(f"init_from: the params in {path}/{step} do not match the model config "
                     f"(different preset or patch size?): {e}") from e
  finally:
    manager.close()
  return restored["params"]
