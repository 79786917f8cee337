"""Parameter counts and forward FLOPs of a VideoDiT config (for MFU and capacity planning)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from densedpo_jax.model.config import DiTConfig


def init_shapes(cfg: DiTConfig, frames: int = 1, height: int | None = None, width: int | None = None,
                text_len: int = 1):
  """Abstract variables (`jax.ShapeDtypeStruct` leaves) of `VideoDiT(cfg)`, without allocating."""
  from densedpo_jax.model.dit import VideoDiT  # Local: keeps this module importable on its own.
  pt, ph, pw = cfg.patch_size
  x = jnp.zeros((1, frames * pt, (height or ph), (width or pw), cfg.in_channels))
  text = jnp.zeros((1, text_len, cfg.text_dim))
  init = lambda: VideoDiT(cfg).init(jax.random.key(0), x, jnp.zeros((1,)), text,
                                     jnp.ones((1, text_len), bool))
  return jax.eval_shape(init)


def param_count(cfg: DiTConfig, collection: str = "params") -> int:
  """Number of scalars in a variable collection (`'params'` = base, `'lora'` = adapter)."""
  shapes = init_shapes(cfg)
  leaves = jax.tree_util.tree_leaves(shapes.get(collection, {}))
  return int(sum(np.prod(leaf.shape) for leaf in leaves))


def forward_flops(cfg: DiTConfig, batch: int, frames: int, height: int, width: int,
                  text_len: int, lora_enabled: bool = True) -> float:
  """Matmul FLOPs (2 per multiply-add) of one forward pass on `[batch, frames, height, width, C]`.

  Elementwise work (norms, softmax, RoPE) is left out: it is a few percent at these sizes and
  is not what the MXU / tensor cores run. Backward costs about twice the forward.
  """
  pt, ph, pw = cfg.patch_size
  n = (frames // pt) * (height // ph) * (width // pw)  # Video tokens per sample.
  d, m, p, l = cfg.width, cfg.mlp_dim, cfg.patch_dim, text_len
  self_attn = 4 * n * d * d + 2 * n * n * d
  cross_attn = 2 * n * d * d + 2 * l * d * d + 2 * n * l * d
  mlp = 2 * n * d * m
  adaln = 6 * d * d
  block = self_attn + cross_attn + mlp + adaln
  lora = 0
  if lora_enabled and cfg.lora.rank > 0:
    tokens_io = {"self_q": (n, d, d), "self_k": (n, d, d), "self_v": (n, d, d),
                 "self_out": (n, d, d), "cross_q": (n, d, d), "cross_k": (l, d, d),
                 "cross_v": (l, d, d), "cross_out": (n, d, d), "mlp_in": (n, d, m),
                 "mlp_out": (n, m, d)}
    lora = sum(tok * cfg.lora.rank * (i + o) for tgt, (tok, i, o) in tokens_io.items()
               if cfg.lora.applies_to(tgt))
  embed = n * p * d + n * d * p + 2 * d * d  # Patch embed, final projection, final adaLN.
  cond = cfg.time_freq_dim * d + d * d + l * (cfg.text_dim * d + d * d)
  if cfg.pooled_text_cond:
    cond += cfg.text_dim * d + d * d
  return float(2 * batch * (cfg.depth * (block + lora) + embed + cond))
