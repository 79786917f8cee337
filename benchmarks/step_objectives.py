"""Step time, FLOP/s and MFU of the project's jitted train step, for each objective.

    python -m benchmarks.step_objectives                   # tiny and small presets
    python -m benchmarks.step_objectives --presets tiny --quick

Times `train_step.make_train_step` (jit, state donated, one device) for flow matching on B
videos and for Flow-DPO and DenseDPO on B pairs (LoRA rank 16 on a frozen random base):
the first (compiling) step is excluded, then the median of `--steps` rounds in which the three
objectives take turns (so machine load hits them alike), each step waited on with
`jax.block_until_ready`. FLOPs come from `model.forward_flops` (matmuls only):

  flow matching  3 x fwd(B)                            fwd + bwd (input and weight gradients)
  DPO            2 x fwd(2B, LoRA) + fwd(2B, no LoRA)  policy fwd + bwd, reference fwd

The frozen base gets no weight gradient, so the policy backward costs about one forward (input
gradients; the LoRA weight gradients are the small LoRA part of it).

MFU is achieved FLOP/s over a measured matmul ceiling (best of a few jitted n^3 matmuls,
float32 on CPU, bfloat16 on an accelerator), taken before and after the steps; on a shared
machine it is still noisy. Sizes: `benchmarks/timing.PRESETS` (tiny: the ShapesWorld preset,
batch 16; small: the `small` DiT at a latent reduced to fit a CPU run, batch 2; mid).

The ratios: DPO step on B pairs / flow-matching step on B videos (target <= 2.6; by FLOPs
about 6/3 = 2.0 with a frozen base) and DenseDPO / Flow-DPO (target <= 1.02).
"""
from __future__ import annotations

import argparse
import os

import jax

from benchmarks.timing import PRESETS, OursStep, make_config, matmul_ceiling, step_flops, time_steps
from densedpo_jax.training import host_memory

LOSSES = ("flow_matching", "flow_dpo", "dense_dpo")


def bench(preset: str, steps: int, dtype: str = "float32") -> dict[str, tuple[float, float]]:
  """`{objective: (median step seconds, training FLOPs a step)}` on one preset computing in
  `dtype`, the objectives timed in turn (`time_steps`)."""
  _, _, latent, text, batch = PRESETS[preset]
  runs = {loss: OursStep(make_config(preset, loss, dtype), latent, text, batch) for loss in LOSSES}
  return {loss: (seconds, step_flops(runs[loss].cfg, loss, latent, text, batch))
          for loss, seconds in time_steps(runs, steps).items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=list(PRESETS))
  parser.add_argument("--steps", type=int, default=5, help="timed steps a row (median)")
  parser.add_argument("--quick", action="store_true", help="2 timed steps, smaller matmul ceiling")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype (parameters stay float32)")
  args = parser.parse_args()
  host_memory.retain_freed_memory()
  print(host_memory.describe(), flush=True)
  steps = 2 if args.quick else args.steps

  n, repeats = (1024, 3) if args.quick else (2048, 5)
  peak, dtype = matmul_ceiling(n, repeats)
  rows, ratios = [], []
  for preset in args.presets:
    batch = PRESETS[preset][4]
    t = {}
    for loss, (t[loss], flops) in bench(preset, steps, args.dtype).items():
      rows.append((preset, loss, batch, t[loss], flops))
    ratios.append((preset, t["flow_dpo"] / t["flow_matching"], t["dense_dpo"] / t["flow_matching"],
                   t["dense_dpo"] / t["flow_dpo"]))
  peak = max(peak, matmul_ceiling(n, repeats)[0])  # Best of before and after: less load noise.

  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}, "
        f"{os.cpu_count()} CPU cores), jax {jax.__version__}; compute {args.dtype}")
  print(f"matmul ceiling ({dtype}, {n}^3, best of {repeats} before and after): "
        f"{peak / 1e9:,.1f} GFLOP/s; step time = median of {steps} steps, the objectives "
        "taking turns\n")
  head = ("preset", "objective", "batch", "step ms", "GFLOP/step", "GFLOP/s", "MFU")
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for preset, loss, batch, sec, flops in rows:
    unit = "videos" if loss == "flow_matching" else "pairs"
    print(f"| {preset} | {loss} | {batch} {unit} | {sec * 1e3:,.1f} | {flops / 1e9:,.2f} | "
          f"{flops / sec / 1e9:,.1f} | {flops / sec / peak:.1%} |")
  print("\n| preset | Flow-DPO / FM | DenseDPO / FM | DenseDPO / Flow-DPO |")
  print("|---|---|---|---|")
  for preset, fd, dd, df in ratios:
    print(f"| {preset} | {fd:.2f} | {dd:.2f} | {df:.3f} |")
  print("\nTargets: DPO step on B pairs / FM step on B videos <= 2.6 (by FLOPs about 2.0 with a "
        "frozen base); DenseDPO / Flow-DPO <= 1.02.")


if __name__ == "__main__":
  main()
