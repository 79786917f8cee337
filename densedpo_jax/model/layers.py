"""Building blocks of the video DiTs: patchify, 3D RoPE, timestep embedding, attention, block stacks."""
from __future__ import annotations

import math

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from densedpo_jax.model.attention import attention
from densedpo_jax.model.config import DiTConfig
from densedpo_jax.model.lora import LoRADense

Array = jax.Array
# Logical names of activations, apart from the weights' (`embed`, `mlp`, `heads`): with FSDP the
# weights' embed axis is sharded while tokens are not (training/sharding.py maps both).
TOKENS = ("act_batch", "act_length", "act_embed")
HEADS = ("act_batch", "act_length", "act_heads", "act_kv")
HIDDEN = ("act_batch", "act_length", "act_mlp")


def patchify(x: Array, patch_size: tuple[int, int, int]) -> Array:
  """`[B, T, H, W, C]` -> `[B, T/pt, H/ph, W/pw, pt*ph*pw*C]`."""
  pt, ph, pw = patch_size
  _, t, h, w, _ = x.shape
  if t % pt or h % ph or w % pw:
    raise ValueError(f"Video latent of shape {x.shape} [B, T, H, W, C] is not divisible by "
                     f"patch_size (pt, ph, pw) = {patch_size}")
  return einops.rearrange(x, "b (t pt) (h ph) (w pw) c -> b t h w (pt ph pw c)", pt=pt, ph=ph, pw=pw)


def unpatchify(x: Array, patch_size: tuple[int, int, int], channels: int) -> Array:
  """Exact inverse of `patchify`: `[B, t, h, w, pt*ph*pw*C]` -> `[B, T, H, W, C]`."""
  pt, ph, pw = patch_size
  return einops.rearrange(x, "b t h w (pt ph pw c) -> b (t pt) (h ph) (w pw) c",
                          pt=pt, ph=ph, pw=pw, c=channels)


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
  """Splits the head dimension over (t, h, w): even sizes, h and w equal, t takes the rest."""
  dhw = 2 * (head_dim // 6)
  return head_dim - 2 * dhw, dhw, dhw


def rope_3d(grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0) -> tuple[Array, Array]:
  """Axial 3D rotary embedding for a token grid `(t, h, w)` (row-major token order).

  Returns `(cos, sin)`, each `[t*h*w, head_dim // 2]` float32. Each axis gets its own
  band of frequencies, so the angle between two tokens depends only on their offset.
  The grid is static, so the tables are computed in float64 NumPy (angles reach ~100 rad, where
  float32 cos/sin lose ~1e-5) and enter the graph as constants.
  """
  coords = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in grid], indexing="ij"),
                    axis=-1).reshape(-1, 3)
  angles = np.concatenate([coords[:, axis:axis + 1] * theta ** (-np.arange(0, dim, 2) / dim)
                           for axis, dim in enumerate(rope_axis_dims(head_dim))], axis=-1)
  return jnp.asarray(np.cos(angles), jnp.float32), jnp.asarray(np.sin(angles), jnp.float32)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """Rotates pairs `(i, i + D/2)` of `x` `[B, N, heads, D]` by the angles of `cos, sin` `[N, D/2]`."""
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
  """Sinusoidal embedding of `t` `[B]` in [0, 1] (scaled by 1000, as in DiT) -> `[B, dim]`, cos first.

  Angles reach 1000 rad, where one float32 ulp of a frequency moves the angle by ~6e-5. The
  frequencies are rounded as diffusers' `get_timestep_embedding` rounds them (a float32 exponent,
  then exp), computed once in NumPy, so Wan's embedding matches the reference to float32 rounding.
  """
  half = dim // 2
  exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)
  freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
  args = (1000.0 * t.astype(jnp.float32))[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class Attention(nn.Module):
  """Self-attention (with 3D RoPE) or cross-attention (to text), with RMSNorm on q and k.

  `prefix` is 'self' or 'cross'; it names the LoRA targets (`self_q`, `cross_out`, ...).
  """
  cfg: DiTConfig
  prefix: str
  lora_enabled: bool = True

  def _dense(self, target: str, features: int, axes):
    cfg = self.cfg
    return LoRADense(features, axes, lora=cfg.lora, use_lora=cfg.lora.applies_to(target),
                     lora_enabled=self.lora_enabled, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     name=target.split("_")[1])

  @nn.compact
  def __call__(self, x: Array, context: Array, mask: Array | None = None,
               rope: tuple[Array, Array] | None = None) -> Array:
    """`x` `[B, N, width]`, `context` `[B, M, width]` (== x for self-attention) -> `[B, N, width]`."""
    cfg, p = self.cfg, self.prefix
    heads_shape = lambda y: y.reshape(y.shape[:2] + (cfg.num_heads, cfg.head_dim))
    q = heads_shape(self._dense(f"{p}_q", cfg.width, ("embed", "heads"))(x))
    k = heads_shape(self._dense(f"{p}_k", cfg.width, ("embed", "heads"))(context))
    v = heads_shape(self._dense(f"{p}_v", cfg.width, ("embed", "heads"))(context))
    q = nn.RMSNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="q_norm")(q)
    k = nn.RMSNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="k_norm")(k)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    q = nn.with_logical_constraint(q, HEADS)
    out = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, cfg.attention_impl)
    out = out.reshape(out.shape[:2] + (cfg.width,))
    return self._dense(f"{p}_out", cfg.width, ("heads", "embed"))(out)


class Mlp(nn.Module):
  """`width -> mlp_dim -> width` with tanh-GELU; `names` of the two projections (Wan keeps
  diffusers' `net_0`, `net_2`)."""
  cfg: DiTConfig
  lora_enabled: bool = True
  names: tuple[str, str] = ("fc_in", "fc_out")

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    kw = dict(lora=cfg.lora, lora_enabled=self.lora_enabled, dtype=cfg.dtype,
              param_dtype=cfg.param_dtype)
    h = LoRADense(cfg.mlp_dim, ("embed", "mlp"), use_lora=cfg.lora.applies_to("mlp_in"),
                  name=self.names[0], **kw)(x)
    h = nn.with_logical_constraint(nn.gelu(h, approximate=True), HIDDEN)
    return LoRADense(cfg.width, ("mlp", "embed"), use_lora=cfg.lora.applies_to("mlp_out"),
                     name=self.names[1], **kw)(h)


def check_inputs(model: str, cfg, x: Array, t: Array, text: Array, text_mask: Array,
                 per_frame_t: bool = False) -> None:
  """Shape checks shared by the models' calls; errors name the argument and the expected shape.

  `per_frame_t`: the model also takes a noise level per latent frame, `t [B, T]`.
  """
  if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
    raise ValueError(f"{model}: x has shape {x.shape}; expected [B, T, H, W, C] with "
                     f"C = in_channels = {cfg.in_channels}")
  b = x.shape[0]
  if t.shape != (b,) and not (per_frame_t and t.shape == (b, x.shape[1])):
    want = f"[B] = ({b},)" + (f" or [B, T] = ({b}, {x.shape[1]})" if per_frame_t else "")
    raise ValueError(f"{model}: t has shape {t.shape}; expected {want}")
  if text.ndim != 3 or text.shape[0] != b or text.shape[-1] != cfg.text_dim:
    raise ValueError(f"{model}: text has shape {text.shape}; expected [B, L, text_dim] = "
                     f"({b}, L, {cfg.text_dim})")
  if text_mask.shape != text.shape[:2]:
    raise ValueError(f"{model}: text_mask has shape {text_mask.shape}; expected [B, L] = "
                     f"{text.shape[:2]}")


def remat_block(block: type[nn.Module], cfg) -> type[nn.Module]:
  """`block` wrapped in `nn.remat` with `cfg.remat_policy` ('none', 'full' or a
  `jax.checkpoint_policies` name)."""
  if cfg.remat_policy == "none":
    return block
  if cfg.remat_policy == "full":
    policy = None
  elif hasattr(jax.checkpoint_policies, cfg.remat_policy):
    policy = getattr(jax.checkpoint_policies, cfg.remat_policy)
  else:
    raise ValueError(f"remat_policy={cfg.remat_policy!r}: expected 'none', 'full' or a name in "
                     "jax.checkpoint_policies")
  return nn.remat(block, policy=policy, prevent_cse=not cfg.scan_layers)


def run_blocks(block: type[nn.Module], cfg, lora_enabled: bool, h: Array, args: tuple) -> Array:
  """Applies `cfg.depth` blocks `block(cfg, lora_enabled)(h, *args) -> (h, None)` to tokens `h`.

  Call inside a compact `__call__`. Looped blocks are named `block_{i}`; with `cfg.scan_layers`
  one `nn.scan` named `blocks` holds every variable with a leading layer axis (`model/layout.py`
  converts between the two).
  """
  block = remat_block(block, cfg)
  if cfg.scan_layers:
    blocks = nn.scan(block, variable_axes={"params": 0, "lora": 0},
                     split_rngs={"params": True}, in_axes=(nn.broadcast,) * len(args),
                     length=cfg.depth, metadata_params={nn.PARTITION_NAME: "layers"})
    h, _ = blocks(cfg, lora_enabled, name="blocks")(h, *args)
  else:
    for i in range(cfg.depth):
      h, _ = block(cfg, lora_enabled, name=f"block_{i}")(h, *args)
  return h
