"""Convert variable trees between the looped (`block_0 .. block_{n-1}`) and scanned layouts.

A checkpoint trained with `scan_layers=True` holds one `blocks` subtree whose leaves carry a
leading layer axis; the looped model holds one subtree per block. These functions move
`'params'` or `'lora'` trees between the two, so either layout can load the other.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def stack_blocks(tree: dict[str, Any], depth: int) -> dict[str, Any]:
  """Looped -> scanned: `block_i` subtrees become one `blocks` subtree `[depth, ...]`."""
  names = [f"block_{i}" for i in range(depth)]
  missing = [n for n in names if n not in tree]
  if missing:
    raise KeyError(f"stack_blocks: tree lacks {missing}; has {sorted(tree)}")
  out = {k: v for k, v in tree.items() if k not in names}
  out["blocks"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[tree[n] for n in names])
  return out


def unstack_blocks(tree: dict[str, Any], depth: int) -> dict[str, Any]:
  """Scanned -> looped: the inverse of `stack_blocks`."""
  if "blocks" not in tree:
    raise KeyError(f"unstack_blocks: tree has no 'blocks' subtree; has {sorted(tree)}")
  out = {k: v for k, v in tree.items() if k != "blocks"}
  for i in range(depth):
    out[f"block_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], tree["blocks"])
  return out
