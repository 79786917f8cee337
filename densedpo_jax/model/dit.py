"""VideoDiT: a latent text-to-video Diffusion Transformer predicting rectified-flow velocity.

Patchified 3D latents -> blocks of [3D self-attention with RoPE, cross-attention to text,
MLP], each modulated by adaLN from the timestep (and pooled text) -> velocity with the
shape of the input. Gates and the final projection start at zero, so a fresh model
outputs exactly 0.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from densedpo_jax.model.config import DiTConfig
from densedpo_jax.model.layers import (TOKENS, Attention, Mlp, check_inputs, patchify, rope_3d,
                                       run_blocks, timestep_embedding, unpatchify)
from densedpo_jax.model.lora import LoRADense

Array = jax.Array


def _dense(cfg: DiTConfig, features: int, axes, name: str, zero: bool = False) -> LoRADense:
  init = nn.initializers.zeros if zero else nn.initializers.xavier_uniform()
  return LoRADense(features, axes, kernel_init=init, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                   name=name)


def _modulate(x: Array, shift: Array, scale: Array) -> Array:
  """adaLN: `x` `[B, N, D]`, `shift, scale` `[B, D]`."""
  return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
  """One block. Returns `(x, None)` so the same module serves a Python loop and `nn.scan`."""
  cfg: DiTConfig
  lora_enabled: bool = True

  @nn.compact
  def __call__(self, x, cond, context, context_mask, rope_cos, rope_sin):
    """`x` `[B, N, width]`, `cond` `[B, width]`, `context` `[B, L, width]`, `context_mask` `[B, L]`."""
    cfg = self.cfg
    norm = lambda name: nn.LayerNorm(use_scale=False, use_bias=False, dtype=cfg.dtype,
                                     param_dtype=cfg.param_dtype, name=name)
    mod = _dense(cfg, 6 * cfg.width, ("embed", "mlp"), "adaln", zero=True)(nn.silu(cond))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)

    h = _modulate(norm("norm1")(x), shift1, scale1)
    h = Attention(cfg, "self", self.lora_enabled, name="self_attn")(h, h, rope=(rope_cos, rope_sin))
    x = nn.with_logical_constraint(x + gate1[:, None, :] * h, TOKENS)

    h = nn.LayerNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="norm_cross")(x)
    mask = context_mask[:, None, None, :]  # [B, heads, N, L] by broadcasting.
    x = x + Attention(cfg, "cross", self.lora_enabled, name="cross_attn")(h, context, mask=mask)

    h = _modulate(norm("norm2")(x), shift2, scale2)
    h = Mlp(cfg, self.lora_enabled, name="mlp")(h)
    x = nn.with_logical_constraint(x + gate2[:, None, :] * h, TOKENS)
    return x, None


class VideoDiT(nn.Module):
  """Rectified-flow velocity model `v_theta(x_t, t, text)`.

  Variables: `'params'` (the base network) and, when `cfg.lora.rank > 0`, `'lora'`.
  """
  cfg: DiTConfig

  @nn.compact
  def __call__(self, x: Array, t: Array, text: Array, text_mask: Array,
               null_text: Array | None = None, lora_enabled: bool = True,
               train: bool = False) -> Array:
    """Predicts the velocity `eps - x0`.

    Args:
      x: noisy latent video `[B, T, H, W, C]`, channels last.
      t: noise level `[B]` in [0, 1] (1 = pure noise).
      text: text embeddings `[B, L, text_dim]`.
      text_mask: `[B, L]` bool, False on padding (masked out of cross-attention).
      null_text: optional `[B]` bool; True replaces that sample's text by the learned null
        embedding (classifier-free guidance).
      lora_enabled: apply the LoRA branch; False runs the base weights (the DPO reference).
      train: enables text dropout to the null embedding (needs a `'dropout'` rng).
    Returns:
      `v` `[B, T, H, W, C]` in the dtype of `x`.
    """
    cfg = self.cfg
    self._check_inputs(x, t, text, text_mask)
    b, tt, hh, ww, _ = x.shape
    text_mask = text_mask.astype(bool)

    # Text: classifier-free guidance replaces the whole sequence by one learned null token.
    null_emb = self.param("null_text", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None,)), (cfg.text_dim,), cfg.param_dtype)
    drop = jnp.zeros((b,), bool) if null_text is None else null_text.astype(bool)
    if train and cfg.text_dropout > 0:
      drop = drop | jax.random.bernoulli(self.make_rng("dropout"), cfg.text_dropout, (b,))
    first = jnp.arange(text.shape[1]) == 0
    null_seq = jnp.where(first[:, None], null_emb.astype(text.dtype), 0.0)
    text = jnp.where(drop[:, None, None], null_seq[None], text)
    text_mask = jnp.where(drop[:, None], first[None, :], text_mask)

    # Condition: timestep (+ pooled text), SD3-style.
    cond = timestep_embedding(t, cfg.time_freq_dim)
    cond = _dense(cfg, cfg.width, (None, "mlp"), "t_mlp1")(cond)
    cond = _dense(cfg, cfg.width, ("mlp", "embed"), "t_mlp2")(nn.silu(cond))
    if cfg.pooled_text_cond:
      m = text_mask[..., None].astype(jnp.float32)
      pooled = (text.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
      pooled = _dense(cfg, cfg.width, (None, "mlp"), "pool_mlp1")(pooled)
      cond = cond + _dense(cfg, cfg.width, ("mlp", "embed"), "pool_mlp2")(nn.silu(pooled))
    context = _dense(cfg, cfg.width, (None, "mlp"), "text_mlp1")(text)
    context = _dense(cfg, cfg.width, ("mlp", "embed"), "text_mlp2")(nn.gelu(context, approximate=True))

    # Tokens.
    patches = patchify(x, cfg.patch_size)
    grid = patches.shape[1:4]
    h = _dense(cfg, cfg.width, (None, "embed"), "patch_embed")(patches.reshape(b, -1, cfg.patch_dim))
    h = nn.with_logical_constraint(h, TOKENS)
    rope_cos, rope_sin = rope_3d(grid, cfg.head_dim, cfg.rope_theta)

    h = run_blocks(DiTBlock, cfg, lora_enabled, h, (cond, context, text_mask, rope_cos, rope_sin))

    # Final layer: adaLN + zero-initialised projection back to patches.
    shift, scale = jnp.split(_dense(cfg, 2 * cfg.width, ("embed", "mlp"), "final_adaln",
                                    zero=True)(nn.silu(cond)), 2, axis=-1)
    h = _modulate(nn.LayerNorm(use_scale=False, use_bias=False, dtype=cfg.dtype,
                               param_dtype=cfg.param_dtype, name="final_norm")(h), shift, scale)
    out = _dense(cfg, cfg.patch_dim, ("embed", None), "final_proj", zero=True)(h)
    out = unpatchify(out.reshape((b,) + tuple(grid) + (cfg.patch_dim,)), cfg.patch_size,
                     cfg.in_channels)
    return out.astype(x.dtype)

  def _check_inputs(self, x, t, text, text_mask):
    check_inputs("VideoDiT", self.cfg, x, t, text, text_mask)
