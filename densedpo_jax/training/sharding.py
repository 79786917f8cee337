"""Device mesh, logical-axis rules, and the shardings of train state and batch.

The model names every parameter axis logically (`embed`, `mlp`, `heads`, `layers`, ...);
rules map those names onto the mesh axes `('data', 'fsdp', 'tensor', 'sequence')`. The batch is
split over `('data', 'fsdp')`: FSDP shards the weights over `fsdp` and the batch over both.
`sequence` splits each video's tokens (context parallelism: attention gathers the keys and values,
`model/attention.py`), so a device holds `1 / sequence` of every activation.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axis (or axes, or None = replicated). Weights: embed, mlp, heads, kv,
# layers; activations (model/layers.py): act_*. The trainer binds these rules around init, the
# step and sampling (`nn.logical_axis_rules`), so the model's activation constraints act.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("length", None),
    ("layers", None),
    ("act_batch", BATCH_AXES),
    ("act_length", "sequence"),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces one -1 in `shape` by the remaining devices; checks the product. A shape without
  the last axis (`(data, fsdp, tensor)`) has `sequence` 1."""
  shape = [int(s) for s in shape]
  if len(shape) == len(MESH_AXES) - 1:
    shape.append(1)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {shape} must give a size for each of {MESH_AXES}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh shape {shape}: {num_devices} devices are not divisible by {known}")
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"mesh shape {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} "
                     f"devices; {num_devices} are available")
  return tuple(shape)


def create_mesh(shape: Sequence[int] = (-1, 1, 1, 1), dcn_shape: Sequence[int] | None = None,
                devices: Sequence[Any] | None = None) -> Mesh:
  """A `('data', 'fsdp', 'tensor', 'sequence')` mesh.

  Args:
    shape: devices per axis within a slice (ICI), or over all devices if `dcn_shape` is None;
      one entry may be -1 (the rest).
    dcn_shape: for multi-slice TPU (or multi-node GPU), slices per axis over the slower
      network; usually `(num_slices, 1, 1, 1)` so only data parallelism crosses slices.
    devices: defaults to `jax.devices()`.
  """
  devices = list(devices if devices is not None else jax.devices())
  if dcn_shape is None:
    ici = resolve_mesh_shape(shape, len(devices))
    array = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
  else:
    dcn = tuple(int(s) for s in dcn_shape) + (1,) * (len(MESH_AXES) - len(dcn_shape))
    ici = resolve_mesh_shape(shape, len(devices) // int(np.prod(dcn)))
    array = mesh_utils.create_hybrid_device_mesh(
        ici, dcn, devices, process_is_granule=not hasattr(devices[0], "slice_index"),
        allow_split_physical_axes=True)
  return Mesh(array, MESH_AXES)


def _fit(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drops mesh axes from dims they do not divide (such dims are replicated instead)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    fitted.append(axes if size > 1 and dim % size == 0 else None)
  return P(*fitted)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """NamedShardings for a tree of boxed (`nn.Partitioned`) abstract values.

  Typically `abstract_tree = jax.eval_shape(init_fn)` where `init_fn` returns the boxed
  variables (and optimiser state built on them). Unboxed leaves are replicated.
  """
  specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  shapes = nn.unbox(abstract_tree)
  return jax.tree_util.tree_map(lambda s, x: NamedSharding(mesh, _fit(s, x.shape, mesh)),
                                mesh_specs, shapes, is_leaf=lambda s: isinstance(s, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `('data', 'fsdp')`, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places a host batch (a tree of arrays whose leading axis is the per-process batch) on the mesh.

  Each process passes its own slice; the result is the global batch. Non-array leaves (ids,
  strings) are dropped: only numeric arrays travel to the devices.
  """
  sharding = batch_sharding(mesh)
  numeric = {k: v for k, v in batch.items() if isinstance(v, (np.ndarray, jax.Array))
             and (v.dtype.kind in "biuf" or v.dtype == ml_dtypes.bfloat16)}
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), numeric)
