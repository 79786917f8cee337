"""Guided pair generation with Wan: our sampler against diffusers' `WanPipeline`, time per pair.

    python -m benchmarks.wan_pairs                         # Wan 2.1 1.3B, 81 x 480 x 832
    python -m benchmarks.wan_pairs --cfg_scale 5 --calls 4
    python -m benchmarks.wan_pairs --tiny --latent 3,8,8 --text_len 16   # a CPU smoke run

A guided pair (Algorithm 2) denoises two noised copies of one video from level eta: about
`eta x num_steps` Euler steps a member, each one transformer call on the conditional prompt and,
with classifier-free guidance (`cfg_scale` != 1), one on the unconditional. Ours: the `pairs`
task's jitted sampler (`tasks.pairs.make_pair_sampler`) on a batch of `--pairs` pairs: both
members and both guidance halves in one call a step. diffusers: `WanPipeline` with the same
transformer size (random weights: time only; tests/test_wan_*.py test that our Euler loop
equals the pipeline's), the prompt and negative embeddings given, `output_type='latent'` (no
VAE), run once a member from `latents` for as many steps. Both run `--calls` steps (eta set so
that the grid below it has that many) in bf16; each time is then scaled to the pair's steps at
`configs/pairs.py:<model>`'s settings and eta 0.55 (the middle of eta_range): seconds a pair and
pairs an hour, and ours / diffusers.
"""
from __future__ import annotations

import argparse
import statistics
import time


def time_ours(cfg, spec, args, eta: float) -> float:
  """Median seconds of one batch of `args.pairs` pairs through our sampler at `eta`."""
  import jax
  import jax.numpy as jnp
  import flax.linen as nn
  import ml_collections
  from benchmarks.timing import random_like
  from benchmarks.timing import median_seconds
  from densedpo_jax.model import LoRAConfig, build
  from densedpo_jax.model.registry import abstract_variables
  from densedpo_jax.tasks import pairs
  cfg = cfg.replace(lora=LoRAConfig())
  model = build(cfg)
  params = random_like(nn.unbox(abstract_variables(cfg))["params"], jax.random.key(0))
  kw = ml_collections.ConfigDict({"num_steps": spec.num_steps, "shift": spec.shift,
                                  "cfg_scale": args.cfg_scale})
  run = pairs.make_pair_sampler(model, kw, "guided", eta)
  b, key = args.pairs, jax.random.key(1)
  x_gt = jax.random.normal(key, (b,) + args.latent + (cfg.latent_channels,), jnp.float32)
  text = jax.random.normal(key, (b, args.text_len, cfg.text_dim), jnp.float32)
  mask = jnp.arange(args.text_len)[None].repeat(b, 0) < 120
  keys_a, keys_b = jax.random.split(jax.random.key(2), b), jax.random.split(jax.random.key(3), b)
  call = lambda: jax.block_until_ready(run(params, keys_a, keys_b, x_gt, jnp.full((b,), eta),
                                           text, mask))
  return median_seconds(call, args.runs)


def time_diffusers(cfg, spec, args, calls: int) -> float:
  """Median seconds of the `args.pairs` pairs' members through `WanPipeline`, `calls` steps."""
  import torch
  import diffusers
  from densedpo_jax.model import wan_weights
  device = "cuda" if torch.cuda.is_available() else "cpu"
  config = {k: v for k, v in wan_weights.diffusers_config(cfg).items() if not k.startswith("_")}
  transformer = diffusers.WanTransformer3DModel(**config).to(torch.bfloat16)
  for name, module in transformer.named_modules():  # As from_pretrained(torch_dtype=bf16) keeps.
    if any(keep in name.split(".") for keep in transformer._keep_in_fp32_modules):
      module.float()
  transformer = transformer.to(device).eval()
  scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=spec.shift or 1.0)
  pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler,
                               transformer=transformer)
  pipe.set_progress_bar_config(disable=True)
  gen = torch.Generator(device).manual_seed(0)
  latents = torch.randn((1, cfg.latent_channels) + args.latent, generator=gen, device=device,
                        dtype=torch.float32)
  text = torch.randn((1, args.text_len, cfg.text_dim), generator=gen, device=device,
                     dtype=torch.bfloat16)
  t, h, w = args.latent
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def pair():
    for _ in range(2 * args.pairs):  # Each member of each pair: one pipeline call.
      pipe(prompt_embeds=text, negative_prompt_embeds=text if args.cfg_scale != 1 else None,
           guidance_scale=args.cfg_scale, num_inference_steps=calls, latents=latents,
           height=8 * h, width=8 * w, num_frames=4 * (t - 1) + 1, output_type="latent")
    sync()

  with torch.inference_mode():
    pair()  # Warm-up.
    times = []
    for _ in range(args.runs):
      start = time.perf_counter()
      pair()
      times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="wan1.3b", help="configs/pairs.py arg")
  parser.add_argument("--latent", default="21,60,104", help="latent frames,height,width")
  parser.add_argument("--text_len", type=int, default=512)
  parser.add_argument("--pairs", type=int, default=1)
  parser.add_argument("--calls", type=int, default=4, help="Euler steps timed a member")
  parser.add_argument("--cfg_scale", type=float, default=None,
                      help="default: the recipe's (configs/pairs.py)")
  parser.add_argument("--runs", type=int, default=2, help="timed repeats (median)")
  parser.add_argument("--tiny", action="store_true", help="width 64, depth 2: a CPU smoke run")
  args = parser.parse_args(argv)
  args.latent = tuple(int(v) for v in args.latent.split(","))
  import jax
  import torch
  from densedpo_jax.objectives import flow
  from densedpo_jax.training.builders import model_config
  from configs import pairs as pairs_config
  c = pairs_config.get_config(args.model)
  if args.tiny:
    c.model.update(width=64, depth=2, num_heads=2, ffn_dim=128, text_dim=64)
  c.model.text_len = args.text_len  # Wan pads every prompt to this many tokens.
  c.model.attention_impl = "cudnn" if jax.default_backend() == "gpu" else "blockwise"
  cfg = model_config(c)
  spec = c.pairs
  args.cfg_scale = spec.cfg_scale if args.cfg_scale is None else args.cfg_scale
  eta_timed = (args.calls + 0.5) / spec.num_steps if not spec.shift else None
  if eta_timed is None:  # A shifted grid: the eta whose guided run takes `calls` steps.
    grid = flow.time_grid(spec.num_steps, spec.shift)
    eta_timed = float((grid[args.calls] + grid[args.calls + 1]) / 2)
  calls = len(flow.guided_times(eta_timed, spec.num_steps, spec.shift or None)) - 1
  pair_calls = len(flow.guided_times(0.55, spec.num_steps, spec.shift or None)) - 1
  ours = time_ours(cfg, spec, args, eta_timed)
  print(f"[ours] {ours:.2f} s for {args.pairs} pair(s), {calls} steps", flush=True)
  theirs = time_diffusers(cfg, spec, args, calls)
  print(f"[diffusers] {theirs:.2f} s for {args.pairs} pair(s), {calls} steps", flush=True)
  device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
  scale = pair_calls / calls / args.pairs
  print(f"\ndevice: {device}; jax {jax.__version__}, torch {torch.__version__}; model "
        f"{args.model}{' (tiny)' if args.tiny else ''}, latent {args.latent}, text "
        f"{args.text_len}; {args.pairs} pair(s) a batch, cfg_scale {args.cfg_scale:g}, "
        f"{spec.num_steps} steps, shift {spec.shift or 'none'}; timed {calls} steps, scaled to "
        f"eta 0.55 ({pair_calls} steps a member)\n")
  print("| sampler | s a pair | pairs an hour |")
  print("|---|---|---|")
  for name, sec in (("ours", ours), ("diffusers WanPipeline", theirs)):
    print(f"| {name} | {sec * scale:.1f} | {3600 / (sec * scale):,.0f} |")
  print(f"\ntime a pair, ours / diffusers: {ours / theirs:.2f}")


if __name__ == "__main__":
  main()
