"""Step time, FLOP/s and MFU of the project's jitted train step, for each objective.

    python benchmarks/train_step.py                    # tiny and small presets
    python benchmarks/train_step.py --presets tiny --quick

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
machine it is still noisy. Sizes:

  tiny   latent 16x16x16x3, text 16x64, batch 16 (the ShapesWorld preset)
  small  latent 4x16x16x16, text 16x512, batch 2 (the `small` DiT, reduced to fit a CPU run)

The ratios: DPO step on B pairs / flow-matching step on B videos (target <= 2.6; by FLOPs
about 6/3 = 2.0 with a frozen base) and DenseDPO / Flow-DPO (target <= 1.02).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # For configs/.
from configs.common import base  # noqa: E402
from densedpo_jax import host_memory
from densedpo_jax import train_step
from densedpo_jax.builders import model_config
from densedpo_jax.model import build, forward_flops

# name: (latent [T, H, W, C], text [L, D], batch)
PRESETS = {"tiny": ((16, 16, 16, 3), (16, 64), 16), "small": ((4, 16, 16, 16), (16, 512), 2)}
LOSSES = ("flow_matching", "flow_dpo", "dense_dpo")


def matmul_ceiling(n: int, repeats: int, statistic=min) -> tuple[float, str]:
  """FLOP/s of a jitted n x n matmul (bf16 on an accelerator, f32 on CPU) from `statistic`
  (default the best) of `repeats` timed runs, and the dtype's name."""
  dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(jnp.matmul)
  jax.block_until_ready(f(a, b))
  seconds = statistic([_timed(lambda: f(a, b)) for _ in range(repeats)])
  return 2 * n**3 / seconds, jnp.dtype(dtype).name


def _timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def make_batch(loss: str, latent, text, batch: int, rng: np.random.Generator) -> dict:
  t = latent[0]
  common = {"text_emb": rng.standard_normal((batch,) + text, np.float32),
            "text_mask": np.arange(text[0])[None].repeat(batch, 0) < text[0] // 2 + 1}
  if loss == "flow_matching":
    return dict(common, latent=rng.standard_normal((batch,) + latent, np.float32))
  labels = rng.choice(np.array([-1, 0, 1], np.int32), size=(batch, t), p=[0.4, 0.2, 0.4])
  labels[:, 0] = 1  # Some ties, never all ties.
  return dict(common, latent_a=rng.standard_normal((batch,) + latent, np.float32),
              latent_b=rng.standard_normal((batch,) + latent, np.float32),
              labels=labels, global_label=rng.choice(np.array([-1, 1], np.int32), size=batch),
              segment_ids=np.repeat(np.arange(t, dtype=np.int32)[None] // 4, batch, 0))


def build_step(c, latent, text, batch: int):
  """The jitted step of config `c` (one device, state donated) on a random batch of its loss.

  Returns `(cfg, step, state, frozen, data, variables)`; call `step(state, frozen, data, key)`.
  """
  cfg = model_config(c)
  model = build(cfg)
  tx = train_step.make_optimizer(c.optim)
  data = make_batch(c.loss, latent, text, batch, np.random.default_rng(0))
  data = jax.tree_util.tree_map(jnp.asarray, data)
  variables = nn.unbox(model.init(
      jax.random.key(0), jnp.zeros((1,) + latent), jnp.zeros((1,)),
      jnp.zeros((1,) + text), jnp.ones((1, text[0]), bool)))
  if c.loss == "flow_matching":
    trainable, frozen = variables["params"], {}
  else:
    trainable, frozen = variables["lora"], variables["params"]
  state = train_step.init_state(trainable, tx, use_ema=False)
  step = jax.jit(train_step.make_train_step(model, c, tx), donate_argnums=0)
  return cfg, step, state, frozen, data, variables


class OursStep:
  """`build_step`'s jitted step, called with a donated state; a call returns the step's loss."""

  def __init__(self, c, latent, text, batch: int):
    self.cfg, self.step, self.state, self.frozen, self.data, self.variables = build_step(
        c, latent, text, batch)
    self.key = jax.random.key(1)

  def __call__(self) -> float:
    self.state, metrics = jax.block_until_ready(
        self.step(self.state, self.frozen, self.data, self.key))
    return float(metrics.compute()["loss"])


def time_steps(steps: dict, rounds: int) -> dict[str, float]:
  """Median seconds of each step `{name: () -> loss}`: one warm-up each, then `rounds` rounds
  taking them in turn, each round starting with the next one, so that the load of a shared
  machine falls on all of them alike and their ratios are comparable."""
  for name, step in steps.items():
    start = time.perf_counter()
    loss = step()
    print(f"  warm-up {name}: {time.perf_counter() - start:.1f} s, loss {loss:.4g}", flush=True)
    assert np.isfinite(loss), name
  names, times = list(steps), {name: [] for name in steps}
  for i in range(rounds):
    for name in names[i % len(names):] + names[:i % len(names)]:
      start = time.perf_counter()
      steps[name]()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def bench(preset: str, steps: int, dtype: str = "float32") -> dict[str, tuple[float, float]]:
  """`{objective: (median step seconds, training FLOPs a step)}` on one preset computing in
  `dtype`, the objectives timed in turn (`time_steps`)."""
  latent, text, batch = PRESETS[preset]
  runs = {}
  for loss in LOSSES:
    c = base()
    c.model.preset, c.loss, c.data.batch_size = preset, loss, batch
    c.model.dtype = dtype
    if loss == "flow_matching":
      c.lora.rank = 0
    runs[loss] = OursStep(c, latent, text, batch)
  return {loss: (seconds, step_flops(runs[loss].cfg, loss, latent, text, batch))
          for loss, seconds in time_steps(runs, steps).items()}


def step_flops(cfg, loss: str, latent, text, batch: int) -> float:
  """Matmul FLOPs of one train step: flow matching on `batch` videos, 3 forwards (the backward
  takes two); DPO on `batch` pairs, the policy's forward and backward (LoRA gradients only: about
  one forward each) on 2B videos and the reference's forward."""
  fwd = lambda b, lora: forward_flops(cfg, b, *latent[:3], text[0], lora_enabled=lora)
  if loss == "flow_matching":
    return 3 * fwd(batch, False)
  return 2 * fwd(2 * batch, True) + fwd(2 * batch, False)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
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
    batch = PRESETS[preset][2]
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
