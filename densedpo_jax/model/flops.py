"""Parameter counts and forward FLOPs of a model config (for MFU and capacity planning)."""
from __future__ import annotations

import jax
import numpy as np

from densedpo_jax.model.config import ModelConfig, family_of


def param_count(cfg: ModelConfig, collection: str = "params") -> int:
  """Number of scalars in a variable collection (`'params'` = base, `'lora'` = adapter)."""
  from densedpo_jax.model.registry import abstract_variables  # Local: no import cycle.
  leaves = jax.tree_util.tree_leaves(abstract_variables(cfg).get(collection, {}))
  return int(sum(np.prod(leaf.shape) for leaf in leaves))


def forward_flops(cfg: ModelConfig, batch: int, frames: int, height: int, width: int,
                  text_len: int, lora_enabled: bool = True, image_tokens: int = 257) -> float:
  """Matmul FLOPs (2 per multiply-add) of one forward pass on `[batch, frames, height, width, C]`.

  Elementwise work (norms, softmax, RoPE) is left out: it is a few percent at these sizes and
  is not what the MXU / tensor cores run. Backward costs about twice the forward. Wan attends to
  its text padded to `cfg.text_len` tokens (unless `cross_attn_mask`), so that is its `text_len`;
  a Wan model with an image branch (`image_dim`) also attends to `image_tokens` CLIP tokens.
  """
  wan = family_of(cfg) == "wan"
  if wan and not cfg.cross_attn_mask:
    text_len = cfg.text_len
  pt, ph, pw = cfg.patch_size
  n = (frames // pt) * (height // ph) * (width // pw)  # Video tokens per sample.
  d, m, p, l = cfg.width, cfg.mlp_dim, cfg.patch_dim, text_len
  self_attn = 4 * n * d * d + 2 * n * n * d
  cross_attn = 2 * n * d * d + 2 * l * d * d + 2 * n * l * d
  mlp = 2 * n * d * m
  adaln = 0 if wan else 6 * d * d  # Wan projects the time embedding to 6 D once, not per block.
  image = wan and cfg.image_dim > 0
  m_img = image_tokens if image else 0
  image_attn = 2 * m_img * d * d + 2 * n * m_img * d  # add_k / add_v projections, attention.
  block = self_attn + cross_attn + mlp + adaln + image_attn
  lora = 0
  if lora_enabled and cfg.lora.rank > 0:
    tokens_io = {"self_q": (n, d, d), "self_k": (n, d, d), "self_v": (n, d, d),
                 "self_out": (n, d, d), "cross_q": (n, d, d), "cross_k": (l, d, d),
                 "cross_v": (l, d, d), "cross_out": (n, d, d), "mlp_in": (n, d, m),
                 "mlp_out": (n, m, d)}
    lora = sum(tok * cfg.lora.rank * (i + o) for tgt, (tok, i, o) in tokens_io.items()
               if cfg.lora.applies_to(tgt))
  embed = n * p * d + n * d * cfg.out_patch_dim + 2 * d * d  # Patch embed, output, final adaLN.
  cond = cfg.time_freq_dim * d + d * d + l * (cfg.text_dim * d + d * d)
  if wan:
    cond += 6 * d * d - 2 * d * d  # time_proj; the head's table has no matmul.
    cond += m_img * (cfg.image_dim * cfg.image_dim + cfg.image_dim * d)  # The image embedder.
  elif cfg.pooled_text_cond:
    cond += cfg.text_dim * d + d * d
  return float(2 * batch * (cfg.depth * (block + lora) + embed + cond))
