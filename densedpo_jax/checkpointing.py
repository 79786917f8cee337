"""Orbax checkpoints of a run: train state, data-iterator state and exportable params.

One `CheckpointManager` step holds three items:
  state    the `TrainState` (trainable tree, optimiser state, step, EMA)
  iter     the Grain iterator state, so a resumed run sees exactly the batches it would have seen
  params   the weights to sample from: the EMA (or raw) params of pretraining, or the base with
           the LoRA adapter folded in for SFT / DPO. `config.init_from` reads this item
           (`model/pretrained.read_params`).
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


def read_item(workdir: str, item: str, step: int | None = None) -> tuple[int, Any]:
  """`(step, tree)` of one item (`'state'` or `'params'`) of a run's checkpoint, restored onto the
  first local device whatever mesh saved it (for tools: export, inspection). Default: latest step."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{workdir}: no checkpoints folder (expected {directory})")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_names=(item,))
  try:
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
      raise FileNotFoundError(f"{directory}: no checkpoint step {step} (found "
                              f"{list(manager.all_steps())})")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        manager.item_metadata(step)[item])
    restored = manager.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(target)}))
  finally:
    manager.close()
  return step, restored[item]
