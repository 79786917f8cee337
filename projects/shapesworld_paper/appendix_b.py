"""Appendix B of the paper: where the losing sample's flow-matching loss dominates.

A clean video `x_w` (the winner) and a copy `x_l` whose central patch is blurred (the loser)
share every pixel outside the patch. With the same noise `eps` and time `t` for both (as in
DPO training), the per-pixel loss difference (paper eqs. 21-23) is

    delta(p) = mean_c [ (v(x_t^l, t) - (eps - x_l))^2 - (v(x_t^w, t) - (eps - x_w))^2 ](p)

Outside the patch the targets are equal, so `delta` there comes only from the model coupling
pixels (attention). `delta > 0` there means a DPO step that raises the loser's loss raises the
loss on pixels both members share, which are real data: StructuralDPO's "unlearning".

    maps = measure(velocity_fn, videos, text, mask, sigmas, patch, key, draws=4)
    run(config, out_dir)  # the experiment's Appendix B: base model, ShapesWorld, figure + JSON
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from densedpo_jax import distributed, previews
from densedpo_jax.objectives import flow, sampling
from densedpo_jax.training.builders import make_source, model_config
from densedpo_jax.data import arrayrecord_io
from densedpo_jax.model import LoRAConfig, build
from densedpo_jax.tasks.arm import video_data
from densedpo_jax.training.builders import with_overrides

VelocityFn = Callable[..., jax.Array]  # (x [B, T, H, W, C], t [B], text, mask) -> [B, T, H, W, C]


def central_patch(height: int, width: int, frac: float) -> tuple[int, int, int, int]:
  """`(y0, y1, x0, x1)` of the centred square patch with side `frac * min(H, W)` pixels."""
  if not 0.0 < frac <= 1.0:
    raise ValueError(f"patch frac must be in (0, 1], got {frac}")
  side = max(1, round(frac * min(height, width)))
  y0, x0 = (height - side) // 2, (width - side) // 2
  return y0, y0 + side, x0, x0 + side


def gaussian_kernel(sigma: float) -> np.ndarray:
  """Normalised 1-D Gaussian taps, radius `ceil(3 sigma)`; `[1.0]` for sigma 0."""
  if sigma < 0:
    raise ValueError(f"sigma must be >= 0, got {sigma}")
  if sigma == 0:
    return np.ones(1)
  r = max(1, math.ceil(3 * sigma))
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  return k / k.sum()


def blur_patch(video: np.ndarray, sigma: float, patch: tuple[int, int, int, int]) -> np.ndarray:
  """`video [T, H, W, C]` with a Gaussian blur of `sigma` pixels inside `patch` only.

  Each frame is blurred over H and W (edge-replicated borders); pixels outside the patch are
  returned unchanged, bit for bit.
  """
  v = np.asarray(video)
  if v.ndim != 4:
    raise ValueError(f"video must be [T, H, W, C], got shape {v.shape}")
  k = gaussian_kernel(sigma)
  r = len(k) // 2
  x = v.astype(np.float64)
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (r, r)
    xp = np.pad(x, pad, mode="edge")
    x = sum(w * np.take(xp, np.arange(i, i + v.shape[axis]), axis=axis) for i, w in enumerate(k))
  y0, y1, x0, x1 = patch
  out = v.copy()
  out[:, y0:y1, x0:x1] = x[:, y0:y1, x0:x1].astype(v.dtype)
  return out


def loss_difference(velocity_fn: VelocityFn, x_w, x_l, eps, t, text, mask) -> jax.Array:
  """Per-pixel `loss_l - loss_w`, mean over channels: `[B, T, H, W]`.

  Args:
    x_w, x_l: winner and loser latents `[B, T, H, W, C]`; eps: their shared noise, same shape.
    t: `[B]` times in (0, 1) (`x_t = (1 - t) x0 + t eps`); text `[B, L, D]`, mask `[B, L]`.
  """
  def err(x0):
    x_t = flow.add_noise(x0, eps, t)
    return jnp.mean((velocity_fn(x_t, t, text, mask) - flow.velocity_target(x0, eps)) ** 2, -1)
  return err(x_l) - err(x_w)


def measure(velocity_fn: VelocityFn, videos: np.ndarray, text: np.ndarray, mask: np.ndarray,
            sigmas: Sequence[float], patch: tuple[int, int, int, int], key: jax.Array,
            draws: int = 4, t_sampler=flow.logit_normal_t) -> dict:
  """Loss-difference maps of `videos [N, T, H, W, C]` against patch-blurred copies.

  Every blur level uses the same `draws` (noise, t) per video, so the levels are comparable.
  Returns {'sigmas', 'maps' [len(sigmas), H, W] (mean over videos, draws and frames),
  'inside', 'outside' (mean delta in / out of the patch per level), 'outside_se' (standard
  error over videos x draws of the outside mean)}.
  """
  n, t_len, h, w, _ = videos.shape
  delta_fn = jax.jit(functools.partial(loss_difference, velocity_fn))
  keys = jax.random.split(key, draws)
  inside_mask = np.zeros((h, w), bool)
  y0, y1, x0, x1 = patch
  inside_mask[y0:y1, x0:x1] = True
  out = {"sigmas": [float(s) for s in sigmas], "maps": [], "inside": [], "outside": [],
         "outside_se": []}
  for sigma in sigmas:
    x_l = np.stack([blur_patch(v, sigma, patch) for v in videos])
    deltas = []
    for k in keys:
      k_eps, k_t = jax.random.split(k)
      eps = jax.random.normal(k_eps, videos.shape, jnp.float32)
      t = t_sampler(k_t, (n,))
      deltas.append(np.asarray(delta_fn(jnp.asarray(videos, jnp.float32),
                                        jnp.asarray(x_l, jnp.float32), eps, t, text, mask)))
    d = np.stack(deltas).astype(np.float64)  # [draws, N, T, H, W]
    per_sample_out = d[..., ~inside_mask].mean(-1).mean(-1)  # [draws, N]
    out["maps"].append(d.mean((0, 1, 2)))
    out["inside"].append(float(d[..., inside_mask].mean()))
    out["outside"].append(float(per_sample_out.mean()))
    out["outside_se"].append(float(per_sample_out.std(ddof=1) / math.sqrt(per_sample_out.size))
                             if per_sample_out.size > 1 else math.nan)
  out["maps"] = np.stack(out["maps"])
  return out


def _diverging(m: np.ndarray, scale: float) -> np.ndarray:
  """`[H, W]` -> uint8 `[H, W, 3]`: blue (< 0), white (0), red (> 0), saturating at +-scale."""
  u = np.clip(m / scale, -1.0, 1.0)[..., None] if scale > 0 else np.zeros(m.shape + (1,))
  red, blue = np.array([1.0, 0.1, 0.1]), np.array([0.1, 0.2, 1.0])
  rgb = np.where(u > 0, 1 + u * (red - 1), 1 - u * (blue - 1))
  return np.round(255 * rgb).astype(np.uint8)


def save_figure(path: str, frames: np.ndarray, result: dict, patch, zoom: int = 8) -> None:
  """Row 1: an example loser frame per blur level; row 2: its mean loss-difference map (red:
  the loser's loss is higher); the patch outlined. `frames [L, H, W, 3]` in [-1, 1]."""
  maps = result["maps"]
  scale = float(np.abs(maps).max())
  h, w = maps.shape[1:]
  cell_w, label_h = w * zoom + 8, 14
  canvas = Image.new("RGB", (len(maps) * cell_w, 2 * h * zoom + 3 * label_h), "white")
  draw = ImageDraw.Draw(canvas)
  y0, y1, x0, x1 = patch
  for i, (frame, m) in enumerate(zip(frames, maps)):
    left = i * cell_w
    draw.text((left + 2, 0), f"sigma {result['sigmas'][i]:.2g} px", fill="black")
    img = Image.fromarray(previews.to_uint8(frame)).resize((w * zoom, h * zoom), Image.NEAREST)
    canvas.paste(img, (left, label_h))
    heat = Image.fromarray(_diverging(m, scale)).resize((w * zoom, h * zoom), Image.NEAREST)
    top = h * zoom + 2 * label_h
    canvas.paste(heat, (left, top))
    for y in (label_h, top):
      draw.rectangle([left + x0 * zoom, y + y0 * zoom, left + x1 * zoom - 1, y + y1 * zoom - 1],
                     outline=(128, 128, 128))
    draw.text((left + 2, h * zoom + label_h), f"in {result['inside'][i]:+.3f}", fill="black")
    draw.text((left + 2, 2 * h * zoom + 2 * label_h), f"out {result['outside'][i]:+.4f}",
              fill="black")
  path = distributed.path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    canvas.save(f, format="PNG")


def pick_videos(records, patch, count: int) -> list:
  """The `count` records whose shape covers the patch most (mean over frames): a blur of an
  empty background changes nothing, so the measurement needs the shape inside the patch."""
  y0, y1, x0, x1 = patch
  cover = [float((((np.asarray(r.latent, np.float32)[:, y0:y1, x0:x1] + 1) / 2).max(-1) > 0.1).mean())
           for r in records]
  return [records[i] for i in np.argsort(cover)[::-1][:count]]


def run(config, out_dir: str) -> dict:
  """Appendix B on ShapesWorld training videos with the base model (`config.init_from`).

  Writes `<out_dir>/appendix_b.png` and `appendix_b.json` (process 0; every process computes,
  since all of them take part in reading the weights); returns the numbers and paths.
  """
  spec = config.experiment.appendix_b
  source = make_source(
      with_overrides(config, **video_data(config, config.videos.split)).data)
  records = [arrayrecord_io.decode_raw(source[i]) for i in range(min(spec.pool, len(source)))]
  first = records[0]
  t_len, h, w, _ = first.latent.shape
  patch = central_patch(h, w, spec.patch_frac)
  chosen = pick_videos(records, patch, spec.num_videos)
  cfg = model_config(config).replace(lora=LoRAConfig())
  params = sampling.load_exported_params(config.init_from, cfg)
  model = build(cfg)
  velocity_fn = functools.partial(model.apply, {"params": params})
  side = patch[1] - patch[0]
  sigmas = [f * side for f in spec.blur_fracs]
  videos = np.stack([np.asarray(r.latent, np.float32) for r in chosen])
  result = measure(velocity_fn, videos, np.stack([r.text_emb for r in chosen]).astype(np.float32),
                   np.stack([np.asarray(r.text_mask, bool) for r in chosen]), sigmas, patch,
                   jax.random.key(spec.seed), draws=spec.draws)
  frames = np.stack([blur_patch(videos[0], s, patch)[t_len // 2] for s in sigmas])
  figure = str(distributed.path(out_dir) / "appendix_b.png")
  out = {k: v for k, v in result.items() if k != "maps"}
  out.update(blur_fracs=list(spec.blur_fracs), patch=list(patch), num_videos=len(chosen),
             draws=spec.draws, video_ids=[r.id for r in chosen], figure=figure)
  if distributed.is_main():
    save_figure(figure, frames, result, patch)
    distributed.write_json(distributed.path(out_dir) / "appendix_b.json", out)
  distributed.barrier("appendix_b")
  return out

