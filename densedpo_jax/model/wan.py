"""The Wan transformers (2.1 and 2.2, text- and image-to-video) in Flax linen, equal to diffusers'
`WanTransformer3DModel`.

Axis legend: B batch; F, H, W latent frames, rows, columns; N = (F/pt)(H/ph)(W/pw) video tokens;
Ft = 1 (one noise level per sample) or F (one per latent frame, Wan 2.2 TI2V); L text tokens;
D width; K heads; Dh = D / K head dim.

    x [B, F, H, W, C_in] -> patch_embedding (Conv3d k = s = (1, 2, 2) as a Dense on patches) -> [B, N, D]
    t [B] or [B, F] -> sinusoid(t * 1000) -> time_embedder -> temb [B, Ft, D] -> time_proj [B, Ft, 6, D]
    text [B, L, 4096] -> zero-pad to 512 tokens -> text_embedder -> context [B, 512, D]
    image_emb [B, 257, image_dim] (Wan 2.1 I2V) -> image_embedder -> image_context [B, 257, D]
    blocks: adaLN(scale_shift_table [1, 6, D] + time projection, per frame) around
            self-attention (q/k RMSNorm over D, interleaved 3D RoPE), cross-attention (to the text,
            plus to the image through add_k_proj / add_v_proj), FFN
    head: scale_shift_table [1, 2, D] + temb, LayerNorm, proj_out D -> 4 C_out, unpatchify

Module names follow diffusers (`condition_embedder/time_embedder/linear_1`, `block_{i}/attn1/to_q`,
`ffn/net_0`, ...), so the weight converter (`model/wan_weights.py`) is a table of renames.
Norms, the timestep embedder and the adaLN modulation run in float32 whatever the compute dtype,
as diffusers does (`FP32LayerNorm`, `_keep_in_fp32_modules`). A noise level per frame gives every
token of that frame the level, which is what diffusers computes from its per-token timesteps.
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


def _frames(x: Array, ft: int) -> Array:
  """Tokens `[B, N, D]` viewed per frame of the noise level: `[B, Ft, N/Ft, D]`."""
  return x.reshape(x.shape[0], ft, -1, x.shape[-1])


def _tokens(x: Array) -> Array:
  """Inverse of `_frames`: `[B, Ft, N/Ft, D]` -> `[B, N, D]`."""
  return x.reshape(x.shape[0], -1, x.shape[-1])


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
  With an `image_context` (Wan 2.1 I2V), the queries also attend to it through `add_k_proj` /
  `add_v_proj` (its keys RMS-normalised by `norm_added_k`), unmasked, and the two attention
  outputs are summed before `to_out`.
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
               mask: Array | None = None, image_context: Array | None = None) -> Array:
    """`x` `[B, N, D]`, `context` `[B, M, D]` (x itself for self-attention), `image_context`
    `[B, M_img, D]` or None -> `[B, N, D]`."""
    cfg = self.cfg
    heads = lambda y: y.reshape(y.shape[:2] + (cfg.num_heads, cfg.head_dim))
    q = heads(self._norm("norm_q")(self._dense("q", ("embed", "heads"))(x)))
    k = heads(self._norm("norm_k")(self._dense("k", ("embed", "heads"))(context)))
    v = heads(self._dense("v", ("embed", "heads"))(context))
    if rope is not None:
      q, k = apply_rope_interleaved(q, *rope), apply_rope_interleaved(k, *rope)
    q = nn.with_logical_constraint(q, HEADS)
    out = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, cfg.attention_impl)
    if image_context is not None:
      dense = lambda name: LoRADense(cfg.width, ("embed", "heads"), dtype=cfg.dtype,
                                     param_dtype=cfg.param_dtype, name=name)
      k_img = heads(self._norm("norm_added_k")(dense("add_k_proj")(image_context)))
      v_img = heads(dense("add_v_proj")(image_context))
      out = out + attention(q, k_img.astype(q.dtype), v_img.astype(q.dtype), None,
                            cfg.attention_impl)
    return self._dense("out", ("heads", "embed"))(out.reshape(out.shape[:2] + (cfg.width,)))


class WanBlock(nn.Module):
  """One Wan block. Returns `(x, None)` so the same module serves a loop and `nn.scan`."""
  cfg: WanConfig
  lora_enabled: bool = True

  @nn.compact
  def __call__(self, x, time_proj, context, context_mask, rope_cos, rope_sin, image_context=None):
    """`x` `[B, N, D]`, `time_proj` `[B, Ft, 6, D]` (Ft = 1, or a level per frame of the token
    grid), `context` `[B, L, D]`, `context_mask` `[B, L]`, `image_context` `[B, M_img, D]` or None."""
    cfg, dtype = self.cfg, x.dtype
    table = self.param("scale_shift_table", nn.with_logical_partitioning(
        _table_init(cfg.width), (None, None, "embed")), (1, 6, cfg.width), cfg.param_dtype)
    ft = time_proj.shape[1]
    mod = table.astype(F32)[:, None] + time_proj.astype(F32)  # [B, Ft, 6, D]
    shift1, scale1, gate1, shift2, scale2, gate2 = (mod[:, :, i:i + 1] for i in range(6))
    modulate = lambda y, scale, shift: _tokens(_frames(y, ft) * (1 + scale) + shift)
    gated = lambda y, gate: _tokens(_frames(y.astype(F32), ft) * gate)

    h = modulate(_layer_norm(cfg, "norm1", False)(x.astype(F32)), scale1, shift1).astype(dtype)
    h = WanAttention(cfg, "self", self.lora_enabled, name="attn1")(h, h, rope=(rope_cos, rope_sin))
    x = nn.with_logical_constraint((x.astype(F32) + gated(h, gate1)).astype(dtype), TOKENS)

    h = _layer_norm(cfg, "norm2", True)(x.astype(F32)).astype(dtype)
    mask = context_mask[:, None, None, :] if cfg.cross_attn_mask else None
    x = x + WanAttention(cfg, "cross", self.lora_enabled, name="attn2")(
        h, context, mask=mask, image_context=image_context)

    h = modulate(_layer_norm(cfg, "norm3", False)(x.astype(F32)), scale2, shift2).astype(dtype)
    h = Mlp(cfg, self.lora_enabled, names=("net_0", "net_2"), name="ffn")(h)  # diffusers FeedForward.
    x = nn.with_logical_constraint((x.astype(F32) + gated(h, gate2)).astype(dtype), TOKENS)
    return x, None


class _TwoLayerMlp(nn.Module):
  """`linear_1 -> activation -> linear_2` (diffusers `TimestepEmbedding`,
  `PixArtAlphaTextProjection`, and the image embedder's `FeedForward` as `net_0`, `net_2`)."""
  width: int
  activation: str  # 'silu' | 'gelu_tanh' | 'gelu' (exact)
  dtype: str
  param_dtype: str
  hidden: int = 0  # 0: width.
  names: tuple[str, str] = ("linear_1", "linear_2")

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = LoRADense(self.hidden or self.width, (None, "mlp"), name=self.names[0], **kw)(x)
    h = nn.silu(h) if self.activation == "silu" else nn.gelu(
        h, approximate=self.activation == "gelu_tanh")
    return LoRADense(self.width, ("mlp", "embed"), name=self.names[1], **kw)(h)


class WanImageEmbedder(nn.Module):
  """CLIP image features -> image context (diffusers `WanImageEmbedding`): float32 LayerNorm,
  `ff` (Linear image_dim -> image_dim, exact GELU, Linear -> D), float32 LayerNorm; both norms
  are `FP32LayerNorm` with diffusers' default eps 1e-5."""
  cfg: WanConfig

  @nn.compact
  def __call__(self, image_emb: Array) -> Array:
    """`image_emb` `[B, M_img, image_dim]` -> `[B, M_img, D]` in the compute dtype."""
    cfg = self.cfg
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=F32, param_dtype=cfg.param_dtype,
                                     name=name)
    h = norm("norm1")(image_emb.astype(F32)).astype(cfg.dtype)
    h = _TwoLayerMlp(cfg.width, "gelu", cfg.dtype, cfg.param_dtype, hidden=cfg.image_dim,
                     names=("net_0", "net_2"), name="ff")(h)
    return norm("norm2")(h.astype(F32)).astype(cfg.dtype)


class WanConditionEmbedder(nn.Module):
  """Timestep, text and image conditioning (diffusers `WanTimeTextImageEmbedding`)."""
  cfg: WanConfig

  @nn.compact
  def __call__(self, t: Array, text: Array, image_emb: Array | None = None):
    """`t` `[...]` in [0, 1], `text` `[B, L, text_dim]`, `image_emb` `[B, M_img, image_dim]` or
    None -> `temb [..., D]`, `time_proj [..., 6, D]`, `context [B, L, D]`, `image_context
    [B, M_img, D]` or None. The time embedder stays in float32 (diffusers keeps it there)."""
    cfg = self.cfg
    freqs = timestep_embedding(t.reshape(-1), cfg.time_freq_dim)  # cos first, of t * 1000.
    temb = _TwoLayerMlp(cfg.width, "silu", "float32", cfg.param_dtype, name="time_embedder")(freqs)
    temb = temb.astype(cfg.dtype)
    time_proj = LoRADense(6 * cfg.width, ("embed", "mlp"), dtype=cfg.dtype,
                          param_dtype=cfg.param_dtype, name="time_proj")(nn.silu(temb))
    context = _TwoLayerMlp(cfg.width, "gelu_tanh", cfg.dtype, cfg.param_dtype,
                           name="text_embedder")(text)
    image_context = None
    if image_emb is not None:
      image_context = WanImageEmbedder(cfg, name="image_embedder")(image_emb)
    return (temb.reshape(t.shape + (cfg.width,)), time_proj.reshape(t.shape + (6, cfg.width)),
            context, image_context)


class WanTransformer(nn.Module):
  """Rectified-flow velocity model `v_theta(x_t, t, text[, image])` with Wan's weights and layout.

  Variables: `'params'` (the base network) and, when `cfg.lora.rank > 0`, `'lora'`.
  """
  cfg: WanConfig

  @nn.compact
  def __call__(self, x: Array, t: Array, text: Array, text_mask: Array,
               null_text: Array | None = None, lora_enabled: bool = True,
               train: bool = False, image_emb: Array | None = None) -> Array:
    """Predicts the velocity `eps - x0` (the VideoDiT call).

    Args:
      x: noisy latent video `[B, F, H, W, in_channels]`, channels last. For image-to-video, the
        caller concatenates the noisy latent (16), the mask (4) and the condition latent (16), as
        diffusers' `WanImageToVideoPipeline` does.
      t: noise level in [0, 1] (1 = pure noise), `[B]`, or `[B, F]` one per latent frame (Wan 2.2
        TI2V keeps its conditioning first frame at 0); the network sees `t * 1000`.
      text: umT5 embeddings `[B, L, text_dim]`, `L <= cfg.text_len`.
      text_mask: `[B, L]` bool, False on padding. Padding is zeroed and the text zero-padded to
        `cfg.text_len` tokens, as the Wan pipeline does; masked only if `cfg.cross_attn_mask`.
      null_text: optional `[B]` bool; True replaces that sample's text by zeros (an all-padding
        prompt). For the Wan pipeline's negative prompt, pass its embedding as `text` instead.
      lora_enabled: apply the LoRA branch; False runs the base weights (the DPO reference).
      train: enables text dropout (`cfg.text_dropout`, needs a `'dropout'` rng).
      image_emb: CLIP image features `[B, M_img, image_dim]` (Wan 2.1 I2V: 257 tokens of
        CLIP ViT-H, image_dim 1280); required when `cfg.image_dim > 0`, refused otherwise.
    Returns:
      `v` `[B, F, H, W, latent_channels]` in the dtype of `x`.
    """
    cfg = self.cfg
    if cfg.image_dim and image_emb is None and self.is_initializing():
      image_emb = jnp.zeros((x.shape[0], 1, cfg.image_dim), x.dtype)  # Shapes only.
    self._check_inputs(x, t, text, text_mask, image_emb)
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

    levels = t.reshape(b, -1)  # [B, Ft]: Ft = 1, or one level per latent frame.
    temb, time_proj, context, image_context = WanConditionEmbedder(
        cfg, name="condition_embedder")(levels, text, image_emb)

    # Tokens.
    patches = patchify(x.astype(dtype), cfg.patch_size)
    grid = patches.shape[1:4]
    h = LoRADense(cfg.width, (None, "embed"), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  name="patch_embedding")(patches.reshape(b, -1, cfg.patch_dim))
    h = nn.with_logical_constraint(h, TOKENS)
    rope_cos, rope_sin = rope_3d(grid, cfg.head_dim, cfg.rope_theta)
    args = (time_proj, context, text_mask, rope_cos, rope_sin)
    h = run_blocks(WanBlock, cfg, lora_enabled, h,
                   args if image_context is None else args + (image_context,))

    # Head.
    table = self.param("scale_shift_table", nn.with_logical_partitioning(
        _table_init(cfg.width), (None, None, "embed")), (1, 2, cfg.width), cfg.param_dtype)
    mod = table.astype(F32)[:, None] + temb.astype(F32)[:, :, None, :]  # [B, Ft, 2, D]
    shift, scale = mod[:, :, 0:1], mod[:, :, 1:2]
    h = _frames(_layer_norm(cfg, "norm_out", False)(h.astype(F32)), levels.shape[1])
    h = _tokens(h * (1 + scale) + shift).astype(dtype)
    out = LoRADense(cfg.out_patch_dim, ("embed", None), dtype=cfg.dtype,
                    param_dtype=cfg.param_dtype, name="proj_out")(h)
    out = unpatchify(out.reshape((b,) + tuple(grid) + (cfg.out_patch_dim,)), cfg.patch_size,
                     cfg.latent_channels)
    return out.astype(x.dtype)

  def _check_inputs(self, x, t, text, text_mask, image_emb):
    cfg = self.cfg
    check_inputs("WanTransformer", cfg, x, t, text, text_mask, per_frame_t=cfg.patch_size[0] == 1)
    if text.shape[1] > cfg.text_len:
      raise ValueError(f"WanTransformer: text has {text.shape[1]} tokens; at most text_len = "
                       f"{cfg.text_len} (the Wan pipeline's max_sequence_length)")
    if cfg.image_dim and image_emb is None:
      raise ValueError(f"WanTransformer: image_dim={cfg.image_dim} (an image-to-video model with "
                       "an image branch) needs image_emb [B, M_img, image_dim] (the CLIP image "
                       "features of the conditioning frame)")
    if not cfg.image_dim and image_emb is not None:
      raise ValueError(f"WanTransformer: image_emb of shape {image_emb.shape} given, but this "
                       "model has no image branch (image_dim = 0)")
    if image_emb is not None and (image_emb.ndim != 3 or image_emb.shape[0] != x.shape[0]
                                  or image_emb.shape[-1] != cfg.image_dim):
      raise ValueError(f"WanTransformer: image_emb has shape {image_emb.shape}; expected "
                       f"[B, M_img, image_dim] = ({x.shape[0]}, M_img, {cfg.image_dim})")
