"""Model configurations (VideoDiT, Wan 2.1, LoRA) and their size presets: one place for all of them.

Two families share one interface: `family='dit'` (the project's VideoDiT) and `family='wan'`
(the Wan 2.1 / 2.2 transformers, numerically equal to diffusers' `WanTransformer3DModel`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

ATTENTION_IMPLS = ("xla", "cudnn", "blockwise", "splash")  # model/attention.py
LORA_TARGETS = (
    "self_q", "self_k", "self_v", "self_out",
    "cross_q", "cross_k", "cross_v", "cross_out",
    "mlp_in", "mlp_out",
)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Low-rank adapter settings. `rank == 0` means no adapter variables at all.

  The adapter adds `(alpha / rank) * x @ A @ B` to each targeted projection;
  `B` starts at zero, so a fresh adapter leaves the network unchanged.
  """
  rank: int = 0
  alpha: float = 0.0  # 0 -> alpha = rank (scale 1).
  targets: tuple[str, ...] = LORA_TARGETS

  def __post_init__(self):
    unknown = set(self.targets) - set(LORA_TARGETS)
    if unknown:
      raise ValueError(f"LoRAConfig.targets: unknown {sorted(unknown)}; expected a subset of {LORA_TARGETS}")
    if self.rank < 0:
      raise ValueError(f"LoRAConfig.rank must be >= 0, got {self.rank}")

  @property
  def scale(self) -> float:
    return (self.alpha or self.rank) / max(self.rank, 1)

  def applies_to(self, target: str) -> bool:
    return self.rank > 0 and target in self.targets


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """A latent text-to-video DiT (paper Appendix A.2; Open-Sora / SD3-style blocks).

  Inputs are latents `[B, T, H, W, C]` with `C == in_channels`; `T, H, W` must be
  divisible by `patch_size = (pt, ph, pw)`. Text embeddings are `[B, L, text_dim]`.
  """
  patch_size: tuple[int, int, int] = (1, 4, 4)
  in_channels: int = 3
  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: float = 4.0
  text_dim: int = 64
  time_freq_dim: int = 256
  pooled_text_cond: bool = True  # SD3-style: masked-mean text embedding added to the adaLN condition.
  rope_theta: float = 10000.0
  text_dropout: float = 0.1  # Probability of the null text during training (for CFG).
  attention_impl: str = "xla"  # 'xla' | 'cudnn' (GPU, bf16/fp16) | 'blockwise' | 'splash' (TPU).
  dtype: str = "float32"  # Compute dtype; parameters are always `param_dtype`.
  param_dtype: str = "float32"
  remat_policy: str = "none"  # 'none' | 'full' | a name in jax.checkpoint_policies.
  scan_layers: bool = False
  lora: LoRAConfig = LoRAConfig()

  def __post_init__(self):
    if self.width % self.num_heads:
      raise ValueError(f"DiTConfig.width={self.width} is not divisible by num_heads={self.num_heads}")
    if self.head_dim % 2 or self.head_dim < 6:
      raise ValueError(f"DiTConfig head_dim={self.head_dim} must be even and >= 6 for 3D RoPE")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"DiTConfig.attention_impl={self.attention_impl!r}; expected one of "
                       f"{ATTENTION_IMPLS}")
    if len(self.patch_size) != 3 or min(self.patch_size) < 1:
      raise ValueError(f"DiTConfig.patch_size={self.patch_size}; expected three positive ints (pt, ph, pw)")
    for name in ("dtype", "param_dtype"):
      jnp.dtype(getattr(self, name))  # Raises a TypeError naming the bad dtype.

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def mlp_dim(self) -> int:
    return int(self.width * self.mlp_ratio)

  @property
  def patch_dim(self) -> int:
    pt, ph, pw = self.patch_size
    return pt * ph * pw * self.in_channels

  @property
  def latent_channels(self) -> int:
    """Channels of the latent video the model predicts (its output)."""
    return self.in_channels

  @property
  def out_patch_dim(self) -> int:
    return self.patch_dim

  def replace(self, **kw: Any) -> "DiTConfig":
    if isinstance(kw.get("lora"), dict):
      kw["lora"] = LoRAConfig(**kw["lora"])
    return dataclasses.replace(self, **kw)


PRESETS: dict[str, DiTConfig] = {
    # ShapesWorld: 16 x 16 x 16 RGB pixels, patch (1, 4, 4) -> 256 tokens; ~1.3M parameters.
    "tiny": DiTConfig(),
    "small": DiTConfig(patch_size=(1, 2, 2), in_channels=16, width=384, depth=12, num_heads=6,
                       text_dim=512),
    "base": DiTConfig(patch_size=(1, 2, 2), in_channels=16, width=768, depth=12, num_heads=12,
                      text_dim=4096),
    # The paper's denoiser depth (32 DiT blocks over a 16-channel MAGVIT-v2 latent, T5-XXL text);
    # the width is not published: 2048 gives about 3.0B parameters (see `param_count`).
    "paper": DiTConfig(patch_size=(1, 2, 2), in_channels=16, width=2048, depth=32, num_heads=16,
                       text_dim=4096),
}


def get_dit_config(preset: str, **overrides: Any) -> DiTConfig:
  """Returns a VideoDiT preset, with fields replaced by `overrides` (unknown fields are an error)."""
  return get_model_config("dit", preset, **overrides)


@dataclasses.dataclass(frozen=True)
class WanConfig:
  """A Wan transformer (diffusers `WanTransformer3DModel`): Wan 2.1 / 2.2, text- or image-to-video.

  Field names match `DiTConfig` where the concept is the same; `ffn_dim`, `eps`, `text_len`,
  `cross_attn_mask`, `out_channels` and `image_dim` are Wan's own. Inputs are latents
  `[B, F, H, W, in_channels]` and umT5 embeddings `[B, L, text_dim]`:

    text-to-video (Wan 2.1, Wan 2.2 A14B)  in 16 = out (the Wan 2.1 VAE: 4x time, 8x space)
    Wan 2.2 TI2V-5B                        in 48 = out (the Wan 2.2 VAE: 4x time, 16x space)
    image-to-video (Wan 2.1 I2V, 2.2 I2V)  in 36 = 16 noisy + 4 mask + 16 condition, out 16;
                                           Wan 2.1 I2V also attends to CLIP image features
                                           `[B, 257, image_dim]` (image_dim 1280)
  """
  patch_size: tuple[int, int, int] = (1, 2, 2)
  in_channels: int = 16
  out_channels: int = 0  # 0: the same as in_channels (text-to-video, TI2V).
  image_dim: int = 0  # > 0: the Wan 2.1 I2V image branch (CLIP features of this width).
  width: int = 1536
  depth: int = 30
  num_heads: int = 12
  ffn_dim: int = 8960
  text_dim: int = 4096
  time_freq_dim: int = 256
  rope_theta: float = 10000.0
  eps: float = 1e-6
  # The Wan pipeline zero-pads every prompt embedding to 512 tokens and attends to all of them
  # (no mask); the model reproduces that. `cross_attn_mask=True` masks padding instead.
  text_len: int = 512
  cross_attn_mask: bool = False
  text_dropout: float = 0.0  # Probability of the null (all-zero) text during training.
  attention_impl: str = "xla"
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  scan_layers: bool = False
  lora: LoRAConfig = LoRAConfig()

  def __post_init__(self):
    if self.width % self.num_heads:
      raise ValueError(f"WanConfig.width={self.width} is not divisible by num_heads={self.num_heads}")
    if self.head_dim % 2 or self.head_dim < 6:
      raise ValueError(f"WanConfig head_dim={self.head_dim} must be even and >= 6 for 3D RoPE")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"WanConfig.attention_impl={self.attention_impl!r}; expected one of "
                       f"{ATTENTION_IMPLS}")
    if len(self.patch_size) != 3 or min(self.patch_size) < 1:
      raise ValueError(f"WanConfig.patch_size={self.patch_size}; expected three positive ints")
    if self.out_channels < 0 or self.image_dim < 0:
      raise ValueError(f"WanConfig: out_channels={self.out_channels}, image_dim={self.image_dim}; "
                       "expected >= 0 (0: out_channels = in_channels, no image branch)")
    for name in ("dtype", "param_dtype"):
      jnp.dtype(getattr(self, name))

  head_dim = DiTConfig.head_dim
  patch_dim = DiTConfig.patch_dim
  replace = DiTConfig.replace

  @property
  def mlp_dim(self) -> int:
    return self.ffn_dim

  @property
  def latent_channels(self) -> int:
    """Channels of the latent video the model predicts (its output)."""
    return self.out_channels or self.in_channels

  @property
  def out_patch_dim(self) -> int:
    pt, ph, pw = self.patch_size
    return pt * ph * pw * self.latent_channels


_WAN_14B = dict(width=5120, depth=40, num_heads=40, ffn_dim=13824)
WAN_PRESETS: dict[str, WanConfig] = {
    # The transformer/config.json of the Wan-AI/*-Diffusers checkpoints. Both experts of a Wan 2.2
    # A14B model (transformer/ and transformer_2/) have the same shape; the 480P and 720P Wan 2.1
    # I2V models too.
    "wan2.1-t2v-1.3b": WanConfig(width=1536, depth=30, num_heads=12, ffn_dim=8960),
    "wan2.1-t2v-14b": WanConfig(**_WAN_14B),
    "wan2.1-i2v-14b": WanConfig(in_channels=36, out_channels=16, image_dim=1280, **_WAN_14B),
    "wan2.2-ti2v-5b": WanConfig(in_channels=48, width=3072, depth=30, num_heads=24, ffn_dim=14336),
    "wan2.2-t2v-a14b": WanConfig(**_WAN_14B),
    "wan2.2-i2v-a14b": WanConfig(in_channels=36, out_channels=16, **_WAN_14B),
}
FAMILIES: dict[str, tuple[type, dict[str, Any]]] = {"dit": (DiTConfig, PRESETS),
                                                    "wan": (WanConfig, WAN_PRESETS)}
ModelConfig = DiTConfig | WanConfig


def family_of(cfg: ModelConfig) -> str:
  return "wan" if isinstance(cfg, WanConfig) else "dit"


def get_model_config(family: str, preset: str, **overrides: Any) -> ModelConfig:
  """A preset of `family` ('dit' | 'wan'), with fields replaced by `overrides`.

  Unknown families, presets and fields are errors that list the valid ones.
  """
  if family not in FAMILIES:
    raise KeyError(f"Unknown model family {family!r}; expected one of {sorted(FAMILIES)}")
  cls, presets = FAMILIES[family]
  if preset not in presets:
    raise KeyError(f"Unknown {family} model preset {preset!r}; expected one of {sorted(presets)}")
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = set(overrides) - fields
  if unknown:
    raise KeyError(f"Unknown {cls.__name__} field(s) {sorted(unknown)}; expected among "
                   f"{sorted(fields)}")
  return presets[preset].replace(**overrides)
