"""A PyTorch port of VideoDiT (densedpo_jax/model/dit.py) and its LoRA, for vs_pytorch.py.

Written as a PyTorch user would write it: `nn.Linear` layers, `F.scaled_dot_product_attention`,
a LoRA branch inside the linear layer (peft-style) that `adapters_disabled(model)` bypasses for
the DPO reference. Module names are the Flax ones (`block_3` -> `blocks.3`), so `load_flax` is a
rename table that fails on leftovers; `parity_error` checks that both forwards agree.

Shapes as in VideoDiT: latents `[B, T, H, W, C]` channels last, `t [B]`, text `[B, L, text_dim]`,
`text_mask [B, L]` bool, optional `null_text [B]` bool.
"""
from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Linear):
  """`y = x W^T + b (+ scale * x A B)`; `A [in, r]`, `B [r, out]` as in Flax (`B` starts at 0)."""

  def __init__(self, in_features: int, out_features: int, rank: int = 0, scale: float = 1.0):
    super().__init__(in_features, out_features)
    self.rank, self.scale, self.adapter_enabled = rank, scale, True
    if rank:
      self.lora_a = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(in_features, rank)))
      self.lora_b = nn.Parameter(torch.zeros(rank, out_features))

  def forward(self, x):
    y = super().forward(x)
    if self.rank and self.adapter_enabled:
      y = y + self.scale * ((x @ self.lora_a) @ self.lora_b)
    return y


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
  return [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in ("lora_a", "lora_b")]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
  """Runs the base weights alone (peft's `disable_adapter()`): the DPO reference model."""
  layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
  for m in layers:
    m.adapter_enabled = False
  try:
    yield
  finally:
    for m in layers:
      m.adapter_enabled = True


def rope_3d(grid, head_dim: int, theta: float):
  """Axial 3D RoPE `(cos, sin)`, each `[t*h*w, head_dim // 2]` float32, angles in float64."""
  dhw = 2 * (head_dim // 6)
  dims = (head_dim - 2 * dhw, dhw, dhw)  # (t, h, w): h and w equal, t takes the rest.
  coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid],
                                      indexing="ij"), -1).reshape(-1, 3)
  freqs = [theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d) for d in dims]
  angles = torch.cat([coords[:, i:i + 1] * f for i, f in enumerate(freqs)], -1)
  return angles.cos().float(), angles.sin().float()


def apply_rope(x, cos, sin):
  """Rotates pairs `(i, i + D/2)` of `x [B, N, heads, D]`; `cos, sin [N, D/2]`."""
  x1, x2 = x.chunk(2, dim=-1)
  cos, sin = cos[None, :, None], sin[None, :, None]
  return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
  """`t [B]` in [0, 1] -> `[B, dim]` (cos first), frequencies rounded as diffusers rounds them."""
  half = dim // 2
  exponent = (np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)
              / np.float32(half))
  freqs = torch.from_numpy(np.exp(exponent.astype(np.float64)).astype(np.float32)).to(t.device)
  args = (1000.0 * t.float())[:, None] * freqs[None]
  return torch.cat([args.cos(), args.sin()], -1)


def modulate(x, shift, scale):
  return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
  """Self- (with RoPE) or cross-attention with RMSNorm on q and k, per head."""

  def __init__(self, cfg, prefix: str):
    super().__init__()
    self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
    lora = lambda name: LoRALinear(cfg.width, cfg.width, cfg.lora.rank if cfg.lora.applies_to(
        f"{prefix}_{name}") else 0, cfg.lora.scale)
    self.q, self.k, self.v, self.out = lora("q"), lora("k"), lora("v"), lora("out")
    self.q_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6)
    self.k_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6)

  def forward(self, x, context, mask=None, rope=None):
    """`x [B, N, D]`, `context [B, M, D]`, `mask` bool broadcastable to `[B, heads, N, M]`."""
    b, n, d = x.shape
    heads = lambda y: y.view(b, y.shape[1], self.heads, self.head_dim)
    q, k, v = heads(self.q(x)), heads(self.k(context)), heads(self.v(context))
    q, k = self.q_norm(q), self.k_norm(k)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask)
    return self.out(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
  def __init__(self, cfg):
    super().__init__()
    rank = lambda target: cfg.lora.rank if cfg.lora.applies_to(target) else 0
    self.fc_in = LoRALinear(cfg.width, cfg.mlp_dim, rank("mlp_in"), cfg.lora.scale)
    self.fc_out = LoRALinear(cfg.mlp_dim, cfg.width, rank("mlp_out"), cfg.lora.scale)

  def forward(self, x):
    return self.fc_out(F.gelu(self.fc_in(x), approximate="tanh"))


class DiTBlock(nn.Module):
  def __init__(self, cfg):
    super().__init__()
    w = cfg.width
    self.adaln = nn.Linear(w, 6 * w)
    self.norm1 = nn.LayerNorm(w, eps=1e-6, elementwise_affine=False)
    self.self_attn = Attention(cfg, "self")
    self.norm_cross = nn.LayerNorm(w, eps=1e-6)
    self.cross_attn = Attention(cfg, "cross")
    self.norm2 = nn.LayerNorm(w, eps=1e-6, elementwise_affine=False)
    self.mlp = Mlp(cfg)

  def forward(self, x, cond, context, mask, rope):
    shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(F.silu(cond)).chunk(6, dim=-1)
    h = modulate(self.norm1(x), shift1, scale1)
    x = x + gate1[:, None] * self.self_attn(h, h, rope=rope)
    x = x + self.cross_attn(self.norm_cross(x), context, mask=mask)
    return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class VideoDiT(nn.Module):
  """`v_theta(x_t, t, text)`: the velocity `[B, T, H, W, C]` of a `DiTConfig` (scan_layers off)."""

  def __init__(self, cfg):
    super().__init__()
    self.cfg, w = cfg, cfg.width
    self.null_text = nn.Parameter(0.02 * torch.randn(cfg.text_dim))
    self.t_mlp1, self.t_mlp2 = nn.Linear(cfg.time_freq_dim, w), nn.Linear(w, w)
    if cfg.pooled_text_cond:
      self.pool_mlp1, self.pool_mlp2 = nn.Linear(cfg.text_dim, w), nn.Linear(w, w)
    self.text_mlp1, self.text_mlp2 = nn.Linear(cfg.text_dim, w), nn.Linear(w, w)
    self.patch_embed = nn.Linear(cfg.patch_dim, w)
    self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
    self.final_adaln = nn.Linear(w, 2 * w)
    self.final_norm = nn.LayerNorm(w, eps=1e-6, elementwise_affine=False)
    self.final_proj = nn.Linear(w, cfg.patch_dim)
    self._rope = {}

  def rope(self, grid, device):
    if (grid, device) not in self._rope:
      self._rope[grid, device] = tuple(
          r.to(device) for r in rope_3d(grid, self.cfg.head_dim, self.cfg.rope_theta))
    return self._rope[grid, device]

  def forward(self, x, t, text, text_mask, null_text=None):
    cfg = self.cfg
    b, tt, hh, ww, c = x.shape
    pt, ph, pw = cfg.patch_size
    text_mask = text_mask.bool()
    if null_text is not None:  # CFG / text dropout: the whole text becomes one null token.
      first = torch.arange(text.shape[1], device=text.device) == 0
      null_seq = torch.where(first[:, None], self.null_text.to(text.dtype), 0.0)
      text = torch.where(null_text[:, None, None], null_seq[None], text)
      text_mask = torch.where(null_text[:, None], first[None], text_mask)

    cond = self.t_mlp2(F.silu(self.t_mlp1(timestep_embedding(t, cfg.time_freq_dim))))
    if cfg.pooled_text_cond:
      m = text_mask[..., None].float()
      pooled = (text.float() * m).sum(1) / m.sum(1).clamp(min=1.0)
      cond = cond + self.pool_mlp2(F.silu(self.pool_mlp1(pooled)))
    context = self.text_mlp2(F.gelu(self.text_mlp1(text), approximate="tanh"))

    grid = (tt // pt, hh // ph, ww // pw)
    patches = x.reshape(b, grid[0], pt, grid[1], ph, grid[2], pw, c)
    patches = patches.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, cfg.patch_dim)
    h = self.patch_embed(patches)
    mask, rope = text_mask[:, None, None, :], self.rope(grid, x.device)
    for block in self.blocks:
      h = block(h, cond, context, mask, rope)

    shift, scale = self.final_adaln(F.silu(cond)).chunk(2, dim=-1)
    out = self.final_proj(modulate(self.final_norm(h), shift, scale))
    out = out.reshape(b, *grid, pt, ph, pw, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return out.reshape(b, tt, hh, ww, c).to(x.dtype)


def flax_to_state_dict(params, lora=None) -> dict[str, torch.Tensor]:
  """Flax `'params'` (+ `'lora'`) trees -> this module's state dict (kernels transposed)."""
  from flax import traverse_util
  flat = traverse_util.flatten_dict(params)
  flat.update(traverse_util.flatten_dict(lora or {}))
  out = {}
  for path, value in flat.items():
    names = [f"blocks.{p[len('block_'):]}" if p.startswith("block_") else p for p in path[:-1]]
    leaf = {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
    value = np.asarray(value, np.float32)
    out[".".join(names + [leaf])] = torch.from_numpy(value.T.copy() if path[-1] == "kernel"
                                                     else value.copy())
  return out


def load_flax(model: VideoDiT, params, lora=None) -> VideoDiT:
  """Copies Flax variables into `model`; a key missing or left over on either side is an error."""
  if model.cfg.scan_layers:
    raise ValueError("load_flax: unstack scanned layers first (model/layout.py)")
  model.load_state_dict(flax_to_state_dict(params, lora), strict=True)
  return model


def random_inputs(cfg, batch: int, latent, text_len: int, seed: int = 0):
  """NumPy `(x, t, text, text_mask, null_text)`: padded text, the last video on null text."""
  rng = np.random.default_rng(seed)
  mask = np.arange(text_len)[None] < rng.integers(1, text_len + 1, (batch, 1))
  null = np.arange(batch) == batch - 1
  return (rng.standard_normal((batch,) + tuple(latent), np.float32),
          rng.uniform(size=batch).astype(np.float32),
          rng.standard_normal((batch, text_len, cfg.text_dim), np.float32), mask, null)


def flax_forward(flax_model, variables, inputs, lora_enabled: bool = True) -> np.ndarray:
  """Our jitted forward on NumPy `inputs` (`random_inputs`)."""
  import jax
  apply = jax.jit(functools.partial(flax_model.apply, lora_enabled=lora_enabled))
  return np.asarray(apply(variables, *inputs))


def torch_forward(torch_model, inputs, lora_enabled: bool = True) -> np.ndarray:
  adapters = contextlib.nullcontext() if lora_enabled else adapters_disabled(torch_model)
  with torch.no_grad(), adapters:
    return torch_model(*map(torch.from_numpy, inputs)).numpy()


def rel_error(out: np.ndarray, ref: np.ndarray) -> float:
  """max |out - ref| / max |ref|."""
  return float(np.abs(out - ref).max() / np.abs(ref).max())


def ported(cfg, seed: int = 0):
  """`(flax model, its variables, the torch port holding them)`. Every variable is random (zero
  gates and LoRA `B` would make both outputs trivially equal); norm scales are 1 + noise."""
  import jax
  from flax import linen as nn_flax
  from densedpo_jax.model import build
  from densedpo_jax.model.registry import abstract_variables
  rng = np.random.default_rng(seed)
  shapes = nn_flax.unbox(abstract_variables(cfg))
  fill = lambda path, s: (("scale" in jax.tree_util.keystr(path))
                          + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
  variables = jax.tree_util.tree_map_with_path(fill, shapes)
  torch_model = load_flax(VideoDiT(cfg), variables["params"], variables.get("lora"))
  return build(cfg), variables, torch_model


def parity_error(cfg, latent, text_len: int, batch: int = 3, seed: int = 0) -> float:
  """The larger `rel_error` of torch against ours with LoRA on and off: float32, ported random
  weights, random inputs (`batch` videos of `latent [T, H, W, C]`, text of `text_len` tokens)."""
  flax_model, variables, torch_model = ported(cfg, seed)
  inputs = random_inputs(cfg, batch, latent, text_len, seed + 2)
  return max(rel_error(torch_forward(torch_model, inputs, on),
                       flax_forward(flax_model, variables, inputs, on)) for on in (True, False))
