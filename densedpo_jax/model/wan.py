"""Wan 2.1's text-to-video transformer in Flax linen, equal to diffusers' `WanTransformer3DModel`.

Axis legend: B batch; F, H, W latent frames, rows, columns; N = (F/pt)(H/ph)(W/pw) video tokens;
L text tokens; D width; K heads; Dh = D / K head dim.

    x [B, F, H, W, 16] -> patch_embedding (Conv3d k = s = (1, 2, 2) as a Dense on patches) -> [B, N, D]
    t [B] -> sinusoid(t * 1000) -> time_embedder -> temb [B, D] -> time_proj -> [B, 6, D]
    text [B, L, 4096] -> zero-pad to 512 tokens -> text_embedder -> context [B, 512, D]
    blocks: adaLN(scale_shift_table [1, 6, D] + time projection) around
            self-attention (q/k RMSNorm over D, interleaved 3D RoPE), cross-attention, FFN
    head: scale_shift_table [1, 2, D] + temb, LayerNorm, proj_out D -> 64, unpatchify

Module names follow diffusers (`condition_embedder/time_embedder/linear_1`, `block_{i}/attn1/to_q`,
`ffn/net_0`, ...), so the weight converter (`model/wan_weights.py`) is a table of renames.
Norms, the timestep embedder and the adaLN modulation run in float32 whatever the compute dtype,
as diffusers does (`FP32LayerNorm`, `_keep_in_fp32_modules`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from densedpo_jax.model.config import WanConfig
from densedpo_jax.model.layers import (HEADS, TOKENS, Mlp, attention, check_inputs, patchify,
                                       rope_3d, run_blocks, timestep_embedding, unpatchify)
from densedpo_jax.model.lora import LoRADense

Array = jax.Array
F32 = jnp.float32


def apply_rope_interleaved(x: Array, cos: Array, sin: Array) -> Array:
  """Rotates adjacent pairs `(2i, 2i + 1)` of `x` `[B, N, K, Dh]` by `cos, sin` `[N, Dh/2]`.

  Wan pairs neighbouring channels (VideoDiT pairs `i` with `i + Dh/2`); computed in float32.
  """
  pairs = x.astype(F32).reshape(x.shape[:-1] + (-1, 2))
  x1, x2 = pairs[..., 0], pairs[..., 1]
  cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


def _table_init(width: int):
  """diffusers' `torch.randn(shape) / width**0.5` for the adaLN tables."""
  return lambda key, shape, dtype: jax.random.normal(key, shape, dtype) / width ** 0.5


def _layer_norm(cfg: WanConfig, name: str, affine: bool) -> nn.LayerNorm:
  """diffusers' `FP32LayerNorm`: statistics, scale and bias in float32."""
  return nn.LayerNorm(epsilon=cfg.eps, use_bias=affine, use_scale=affine, dtype=F32,
                      param_dtype=cfg.param_dtype, name=name)


class WanAttention(nn.Module):
  """Self- (`prefix='self'`, diffusers `attn1`) or cross-attention (`'cross'`, `attn2`).

  q and k are RMS-normalised over the full width before the heads split, then rotated (self).
  """
  cfg: WanConfig
  prefix: str
  lora_enabled: bool = True

  def _dense(self, target: str, axes) -> LoRADense:
    cfg = self.cfg
    return LoRADense(cfg.width, axes, lora=cfg.lora, use_lora=cfg.lora.applies_to(
        f"{self.prefix}_{target}"), lora_enabled=self.lora_enabled, dtype=cfg.dtype,
        param_dtype=cfg.param_dtype, name=f"to_{target}")

  def _norm(self, name: str) -> nn.RMSNorm:
    cfg = self.cfg
    return nn.RMSNorm(epsilon=cfg.eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("heads",)),
                      name=name)

  @nn.compact
  def __call__(self, x: Array, context: Array, rope: tuple[Array, Array] | None = None,
               mask: Array | None = None) -> Array:
    """`x` `[B, N, D]`, `context` `[B, M, D]` (x itself for self-attention) -> `[B, N, D]`."""
    cfg = self.cfg
    heads = lambda y: y.reshape(y.shape[:2] + (cfg.num_heads, cfg.head_dim))
    q = heads(self._norm("norm_q")(self._dense("q", ("embed", "heads"))(x)))
    k = heads(self._norm("norm_k")(self._dense("k", ("embed", "heads"))(context)))
    v = heads(self._dense("v", ("embed", "heads"))(context))
    if rope is not None:
      q, k = apply_rope_interleaved(q, *rope), apply_rope_interleaved(k, *rope)
    q = nn.with_logical_constraint(q, HEADS)
    out = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, cfg.attention_impl)
    return self._dense("out", ("heads", "embed"))(out.reshape(out.shape[:2] + (cfg.width,)))


class WanBlock(nn.Module):
  """One Wan block. Returns `(x, None)` so the same module serves a loop and `nn.scan`."""
  cfg: WanConfig
  lora_enabled: bool = True

  @nn.compact
  def __call__(self, x, time_proj, context, context_mask, rope_cos, rope_sin):
    """`x` `[B, N, D]`, `time_proj` `[B, 6, D]`, `context` `[B, L, D]`, `context_mask` `[B, L]`."""
    cfg, dtype = self.cfg, x.dtype
    table = self.param("scale_shift_table", nn.with_logical_partitioning(
        _table_init(cfg.width), (None, None, "embed")), (1, 6, cfg.width), cfg.param_dtype)
    mod = table.astype(F32) + time_proj.astype(F32)
    shift1, scale1, gate1, shift2, scale2, gate2 = (mod[:, i:i + 1] for i in range(6))

    h = (_layer_norm(cfg, "norm1", False)(x.astype(F32)) * (1 + scale1) + shift1).astype(dtype)
    h = WanAttention(cfg, "self", self.lora_enabled, name="attn1")(h, h, rope=(rope_cos, rope_sin))
    x = nn.with_logical_constraint((x.astype(F32) + h.astype(F32) * gate1).astype(dtype), TOKENS)

    h = _layer_norm(cfg, "norm2", True)(x.astype(F32)).astype(dtype)
    mask = context_mask[:, None, None, :] if cfg.cross_attn_mask else None
    x = x + WanAttention(cfg, "cross", self.lora_enabled, name="attn2")(h, context, mask=mask)

    h = (_layer_norm(cfg, "norm3", False)(x.astype(F32)) * (1 + scale2) + shift2).astype(dtype)
    h = Mlp(cfg, self.lora_enabled, names=("net_0", "net_2"), name="ffn")(h)  # diffusers FeedForward.
    x = nn.with_logical_constraint((x.astype(F32) + h.astype(F32) * gate2).astype(dtype), TOKENS)
    return x, None


class _TwoLayerMlp(nn.Module):
  """`linear_1 -> activation -> linear_2` (diffusers `TimestepEmbedding`, `PixArtAlphaTextProjection`)."""
  width: int
  activation: str  # 'silu' | 'gelu_tanh'
  dtype: str
  param_dtype: str

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = LoRADense(self.width, (None, "mlp"), name="linear_1", **kw)(x)
    h = nn.silu(h) if self.activation == "silu" else nn.gelu(h, approximate=True)
    return LoRADense(self.width, ("mlp", "embed"), name="linear_2", **kw)(h)


class WanConditionEmbedder(nn.Module):
  """Timestep and text conditioning (diffusers `WanTimeTextImageEmbedding`, text-to-video)."""
  cfg: WanConfig

  @nn.compact
  def __call__(self, t: Array, text: Array) -> tuple[Array, Array, Array]:
    """`t` `[B]` in [0, 1], `text` `[B, L, text_dim]` -> `temb [B, D]`, `time_proj [B, 6, D]`,
    `context [B, L, D]`. The time embedder stays in float32 (diffusers keeps it there)."""
    cfg = self.cfg
    freqs = timestep_embedding(t, cfg.time_freq_dim)  # cos first, of t * 1000.
    temb = _TwoLayerMlp(cfg.width, "silu", "float32", cfg.param_dtype, name="time_embedder")(freqs)
    temb = temb.astype(cfg.dtype)
    time_proj = LoRADense(6 * cfg.width, ("embed", "mlp"), dtype=cfg.dtype,
                          param_dtype=cfg.param_dtype, name="time_proj")(nn.silu(temb))
    context = _TwoLayerMlp(cfg.width, "gelu_tanh", cfg.dtype, cfg.param_dtype,
                           name="text_embedder")(text)
    return temb, time_proj.reshape(t.shape[0], 6, cfg.width), context


class WanTransformer(nn.Module):
  """Rectified-flow velocity model `v_theta(x_t, t, text)` with Wan 2.1's weights and layout.

  Variables: `'params'` (the base network) and, when `cfg.lora.rank > 0`, `'lora'`.
  """
  cfg: WanConfig

  @nn.compact
  def __call__(self, x: Array, t: Array, text: Array, text_mask: Array,
               null_text: Array | None = None, lora_enabled: bool = True,
               train: bool = False) -> Array:
    """Predicts the velocity `eps - x0` (the VideoDiT call).

    Args:
      x: noisy latent video `[B, F, H, W, C]`, channels last.
      t: noise level `[B]` in [0, 1] (1 = pure noise); the network sees `t * 1000`.
      text: umT5 embeddings `[B, L, text_dim]`, `L <= cfg.text_len`.
      text_mask: `[B, L]` bool, False on padding. Padding is zeroed and the text zero-padded to
        `cfg.text_len` tokens, as the Wan pipeline does; masked only if `cfg.cross_attn_mask`.
      null_text: optional `[B]` bool; True replaces that sample's text by zeros (an all-padding
        prompt). For the Wan pipeline's negative prompt, pass its embedding as `text` instead.
      lora_enabled: apply the LoRA branch; False runs the base weights (the DPO reference).
      train: enables text dropout (`cfg.text_dropout`, needs a `'dropout'` rng).
    Returns:
      `v` `[B, F, H, W, C]` in the dtype of `x`.
    """
    cfg = self.cfg
    self._check_inputs(x, t, text, text_mask)
    b = x.shape[0]
    dtype = jnp.dtype(cfg.dtype)

    # Text: drop to the null prompt, zero the padding, pad to text_len.
    text_mask = text_mask.astype(bool)
    drop = jnp.zeros((b,), bool) if null_text is None else null_text.astype(bool)
    if train and cfg.text_dropout > 0:
      drop = drop | jax.random.bernoulli(self.make_rng("dropout"), cfg.text_dropout, (b,))
    first = jnp.arange(text.shape[1]) == 0
    text = jnp.where(text_mask[..., None] & ~drop[:, None, None], text, 0).astype(dtype)
    text_mask = jnp.where(drop[:, None], first[None, :], text_mask)
    pad = cfg.text_len - text.shape[1]
    text = jnp.pad(text, ((0, 0), (0, pad), (0, 0)))
    text_mask = jnp.pad(text_mask, ((0, 0), (0, pad)))

    temb, time_proj, context = WanConditionEmbedder(cfg, name="condition_embedder")(t, text)

    # Tokens.
    patches = patchify(x.astype(dtype), cfg.patch_size)
    grid = patches.shape[1:4]
    h = LoRADense(cfg.width, (None, "embed"), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  name="patch_embedding")(patches.reshape(b, -1, cfg.patch_dim))
    h = nn.with_logical_constraint(h, TOKENS)
    rope_cos, rope_sin = rope_3d(grid, cfg.head_dim, cfg.rope_theta)
    h = run_blocks(WanBlock, cfg, lora_enabled, h,
                   (time_proj, context, text_mask, rope_cos, rope_sin))

    # Head.
    table = self.param("scale_shift_table", nn.with_logical_partitioning(
        _table_init(cfg.width), (None, None, "embed")), (1, 2, cfg.width), cfg.param_dtype)
    mod = table.astype(F32) + temb.astype(F32)[:, None, :]
    shift, scale = mod[:, 0:1], mod[:, 1:2]
    h = (_layer_norm(cfg, "norm_out", False)(h.astype(F32)) * (1 + scale) + shift).astype(dtype)
    out = LoRADense(cfg.patch_dim, ("embed", None), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    name="proj_out")(h)
    out = unpatchify(out.reshape((b,) + tuple(grid) + (cfg.patch_dim,)), cfg.patch_size,
                     cfg.in_channels)
    return out.astype(x.dtype)

  def _check_inputs(self, x, t, text, text_mask):
    check_inputs("WanTransformer", self.cfg, x, t, text, text_mask)
    if text.shape[1] > self.cfg.text_len:
      raise ValueError(f"WanTransformer: text has {text.shape[1]} tokens; at most text_len = "
                       f"{self.cfg.text_len} (the Wan pipeline's max_sequence_length)")
