"""Guided pair generation (Algo. 2): our jitted sampler against the same loop in PyTorch.

    python -m benchmarks.vs_pytorch_sampler [--runs 5] [--torch_threads 1]

Ours: `pairs.make_pair_sampler` (the task=pairs sampler: jit, `flow.guided_pairs`, one
`lax.fori_loop`) on the plain tiny model. PyTorch: `torch_videodit.VideoDiT` holding the same
weights, the same Euler loop under `torch.inference_mode()`. Settings of the shipped DPO arms
(configs/pairs.py, configs/dpo_common.py): a batch of 32 pairs (64 videos) at eta 0.55 (the middle
of eta_range), 16 grid steps (9 model calls), no time shift, classifier-free guidance when
`cfg_scale != 1` (1 there: none). Reported: pairs/s of each (median of `--runs` batches after a
warm-up) and `sample_error`, the largest difference of the two samplers' pairs from the same
noise, relative to the largest |value| (the warm-up batches).
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch

from benchmarks import torch_videodit as tv
from benchmarks.timing import median_seconds
from configs import dense
from densedpo_jax.tasks import pairs
from densedpo_jax.training import host_memory
from densedpo_jax.objectives import flow
from densedpo_jax.model import LoRAConfig, get_dit_config

ETA, LATENT, TEXT = 0.55, (16, 16, 16, 3), (16, 64)


def spec() -> ml_collections.ConfigDict:
  """The DenseDPO arm's pair settings (batch, steps, shift, CFG scale)."""
  return dense.get_config().pairs


@torch.inference_mode()
def torch_guided_pairs(model, x_gt, eps_a, eps_b, eta: float, text, text_mask, *, num_steps: int,
                       shift=None, cfg_scale=None):
  """`flow.guided_pairs` in PyTorch: `x_gt, eps_* [B, T, H, W, C]`, `text [B, L, D]` -> `(a, b)`."""
  b = x_gt.shape[0]
  times = flow.guided_times(eta, num_steps, shift).tolist()
  x = (1 - eta) * torch.cat([x_gt, x_gt]) + eta * torch.cat([eps_a, eps_b])
  text, text_mask = torch.cat([text, text]), torch.cat([text_mask, text_mask])
  guided = cfg_scale is not None and cfg_scale != 1
  if guided:  # One call on [conditional; unconditional].
    text, text_mask = torch.cat([text, text]), torch.cat([text_mask, text_mask])
    null = torch.arange(4 * b, device=x.device) >= 2 * b
  for t_cur, t_next in zip(times[:-1], times[1:]):
    if guided:
      t = torch.full((4 * b,), t_cur, device=x.device)
      v_cond, v_uncond = model(torch.cat([x, x]), t, text, text_mask, null_text=null).chunk(2)
      v = v_uncond + cfg_scale * (v_cond - v_uncond)
    else:
      v = model(x, torch.full((2 * b,), t_cur, device=x.device), text, text_mask)
    x = x + (t_next - t_cur) * v
  return x[:b], x[b:]


def report(runs: int = 5, device: str = "cpu") -> dict:
  """Times both samplers at the tiny preset (torch on `device`) and prints pairs/s, their ratio
  and `sample_error`."""
  s = spec()
  kw = dict(num_steps=s.num_steps, shift=s.shift or None, cfg_scale=s.cfg_scale)
  cfg = get_dit_config("tiny", lora=LoRAConfig())
  flax_model, variables, torch_model = tv.ported(cfg)
  params = jax.device_put(variables["params"])
  b = s.batch_size
  rng = np.random.default_rng(0)
  x_gt = rng.standard_normal((b,) + LATENT, np.float32)
  text = rng.standard_normal((b,) + TEXT, np.float32)
  mask = np.arange(TEXT[0])[None].repeat(b, 0) < TEXT[0] // 2 + 1
  keys_a, keys_b = jax.random.split(jax.random.key(1), b), jax.random.split(jax.random.key(2), b)
  ours = pairs.make_pair_sampler(flax_model, ml_collections.ConfigDict(kw), "guided", ETA)
  args = (params, keys_a, keys_b, jnp.asarray(x_gt), jnp.full((b,), ETA), jnp.asarray(text),
          jnp.asarray(mask))
  run_ours = lambda: jax.block_until_ready(ours(*args))
  # The noise `guided_pairs` draws from the keys, so both samplers start from the same x_eta.
  to_torch = lambda a: torch.from_numpy(np.array(a)).to(device)
  eps_a, eps_b = (to_torch(flow.per_video_noise(k, LATENT)) for k in (keys_a, keys_b))
  t_args = (to_torch(x_gt), eps_a, eps_b, ETA, to_torch(text), to_torch(mask))
  torch_model.to(device)
  def run_torch():
    out = torch_guided_pairs(torch_model, *t_args, **kw)
    if device != "cpu":
      torch.cuda.synchronize()
    return out

  # The first runs (compile, warm-up) give the outputs that are compared.
  ref = np.concatenate([np.asarray(x) for x in run_ours()])
  out = np.concatenate([x.cpu().numpy() for x in run_torch()])
  error = float(np.abs(out - ref).max() / np.abs(ref).max())
  sec = {"ours": median_seconds(run_ours, runs, warmup=0),
         "torch": median_seconds(run_torch, runs, warmup=0)}
  calls = len(flow.guided_times(ETA, s.num_steps, kw["shift"])) - 1
  print(f"guided pairs, tiny preset: {b} pairs a batch ({2 * b} videos), eta {ETA}, "
        f"{s.num_steps} steps ({calls} model calls), cfg_scale {s.cfg_scale}; median of {runs} "
        f"batches; sample_error {error:.1e}\n")
  print("| sampler | s / batch | pairs/s |")
  print("|---|---|---|")
  for name in ("ours", "torch"):
    print(f"| {name} | {sec[name]:.2f} | {b / sec[name]:.1f} |")
  print(f"\npairs/s ours / torch: {sec['torch'] / sec['ours']:.2f}")
  return {"seconds": sec, "sample_error": error}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=5, help="timed batches (median)")
  parser.add_argument("--torch_threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  host_memory.retain_freed_memory()
  print(host_memory.describe(), flush=True)
  torch.set_num_threads(args.torch_threads)
  # Torch on the GPU when JAX runs on one.
  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  report(args.runs, device)


if __name__ == "__main__":
  main()
