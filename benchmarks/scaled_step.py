"""Step time, peak memory and MFU of a scaled DenseDPO train step on one accelerator.

    python -m benchmarks.scaled_step                          # Wan 2.1 1.3B, 81 x 480 x 832
    python -m benchmarks.scaled_step --attention cudnn blockwise --steps 3
    python -m benchmarks.scaled_step --model wan1.3b --latent 3,8,8 --text_len 16 \
        --attention xla                                       # a CPU check

Builds `configs/dense.py:<model>` (bf16 compute, float32 base and LoRA rank 128, scanned layers,
full remat), fills a random frozen base on the device, and times the jitted DenseDPO step on
`--pairs` pairs without accumulation (a micro-step of the shipped config). The default latent
[21, 60, 104] is 81 frames of 480 x 832 through the Wan VAE (4x temporal, 8x spatial), patch
(1, 2, 2): 32,760 tokens a video, text padded to 512 tokens.

Reported per attention implementation: compile seconds, the median step, peak device memory
(`memory_stats()['peak_bytes_in_use']`; XLA's `memory_analysis()` temp bytes beside it), and MFU
= matmul FLOPs of the step (`model.forward_flops`: 2 x policy forward with LoRA + the remat
recompute is not counted, + reference forward; the usual 6ND-style convention) over the
measured bf16 matmul ceiling (8192^3, median of 10). The planner's prediction is printed beside.
"""
from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax

from benchmarks.timing import dense_batch, matmul_ceiling, median_seconds, random_like
from configs import common
from densedpo_jax import plan
from densedpo_jax.training import train_step
from densedpo_jax.training.builders import model_config
from densedpo_jax.model import build, forward_flops
from densedpo_jax.model.registry import abstract_variables

GIB = 2 ** 30


def bench(args, impl: str, key) -> dict:
  c = common.base()  # What configs/dense.py:<model> sets for training, without the pipeline's
  c.loss = "dense_dpo"  # labeler and pairs sections (the device image lacks their packages).
  common.paper_scale(c, args.model)
  c.model.attention_impl = impl
  c.model.remat_policy = args.remat
  c.optim.accum_steps = 1
  c.data.batch_size = args.pairs
  cfg = model_config(c)
  model, tx = build(cfg), train_step.make_optimizer(c.optim)
  variables = nn.unbox(abstract_variables(cfg))
  frozen = random_like(variables["params"], key)
  state = train_step.init_state(random_like(variables["lora"], key), tx, use_ema=False)
  batch = dense_batch(args.pairs, args.latent, cfg.in_channels, args.text_len, cfg.text_dim, key)
  step = jax.jit(train_step.make_train_step(model, c, tx), donate_argnums=0)

  start = time.perf_counter()
  compiled = step.lower(state, frozen, batch, key).compile()
  compile_s = time.perf_counter() - start
  temp = compiled.memory_analysis().temp_size_in_bytes
  metrics = None

  def one_step():  # The state is donated: each step takes the last one's.
    nonlocal state, metrics
    state, metrics = compiled(state, frozen, batch, key)
    return state, metrics

  step_s = median_seconds(one_step, args.steps)
  loss = float(metrics.compute()["loss"])
  stats = jax.devices()[0].memory_stats() or {}
  fwd = lambda lora: forward_flops(cfg, 2 * args.pairs, *args.latent, args.text_len,
                                   lora_enabled=lora)
  flops = 3 * fwd(True) + fwd(False)  # Policy forward + backward (about 2 forwards), reference.
  planned = plan.plan(c, cfg, tuple(args.latent), args.text_len,
                      {"data": 1, "fsdp": 1, "tensor": 1})["total"]
  del state
  return {"impl": impl, "compile_s": compile_s, "step_s": step_s,
          "peak": stats.get("peak_bytes_in_use", float("nan")), "temp": temp, "flops": flops,
          "planned": planned, "loss": loss}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="wan1.3b", help="configs/dense.py arg")
  parser.add_argument("--latent", default="21,60,104", help="latent frames,height,width")
  parser.add_argument("--text_len", type=int, default=512)
  parser.add_argument("--pairs", type=int, default=1)
  parser.add_argument("--attention", nargs="+", default=["cudnn"])
  parser.add_argument("--remat", default="full")
  parser.add_argument("--steps", type=int, default=3, help="timed steps (median)")
  args = parser.parse_args()
  args.latent = tuple(int(v) for v in args.latent.split(","))

  device = jax.devices()[0]
  peak_flops = (matmul_ceiling(8192, 10, statistics.median)[0]  # bf16 on an accelerator.
                if jax.default_backend() != "cpu" else float("nan"))
  rows = []
  for impl in args.attention:
    rows.append(bench(args, impl, jax.random.key(0)))
    r = rows[-1]
    print(f"[{impl}] compile {r['compile_s']:.0f} s, step {r['step_s']:.2f} s, loss {r['loss']:.4f}",
          flush=True)
  print(f"\ndevice: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
        f"model {args.model}, latent {args.latent}, text {args.text_len}, {args.pairs} pair(s), "
        f"remat {args.remat}; bf16 matmul ceiling {peak_flops / 1e12:,.0f} TFLOP/s")
  head = ("attention", "compile s", "step s", "TFLOP/step", "TFLOP/s", "MFU", "peak GiB",
          "XLA temp GiB", "planned GiB")
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for r in rows:
    rate = r["flops"] / r["step_s"]
    print(f"| {r['impl']} | {r['compile_s']:.0f} | {r['step_s']:.2f} | {r['flops'] / 1e12:,.1f} | "
          f"{rate / 1e12:,.1f} | {rate / peak_flops:.1%} | {r['peak'] / GIB:.1f} | "
          f"{r['temp'] / GIB:.1f} | {r['planned'] / GIB:.1f} |")


if __name__ == "__main__":
  main()
