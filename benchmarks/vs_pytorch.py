"""Our jitted DPO and flow-matching train steps against the same steps written in PyTorch.

    python -m benchmarks.vs_pytorch                        # tiny, 10 steps
    python -m benchmarks.vs_pytorch --presets tiny mid     # on a CPU: about 25 GB of memory
    python -m benchmarks.vs_pytorch --dtype bfloat16       # on a GPU: both there, bf16 compute

Ours: `benchmarks/timing.build_step` (`train_step.make_train_step`, jit, state donated).
PyTorch: `torch_videodit.VideoDiT` holding the same weights (a forward parity check runs first
and is printed), and steps written as flow_grpo / Diffusion-DPO write theirs: winners and losers
concatenated on the batch, one `t` and one noise per pair, the policy forward with autograd, the
reference forward under `torch.no_grad()` with the adapters bypassed, the Flow-DPO loss
(`losses.flow_dpo_loss`), global-norm clipping and AdamW on the LoRA parameters only. The
flow-matching step trains every parameter (no LoRA), with text dropout as ours.

Each step is warmed up once (compile excluded), then the four steps are timed in turn, `--steps`
rounds, and each row is the median. On the CPU each framework runs in a worker process of its
own, the rounds still alternating one step at a time: in one process the two share glibc's
retained heap, and at mid our step's temporaries then fault back in page by page
(docs/performance.md). `--one_process` runs both in this process.

When JAX runs on a GPU, PyTorch runs there too, in this process; with `--dtype bfloat16` ours
uses cuDNN attention and PyTorch `torch.autocast` (float32 parameters and AdamW in both);
float32 matmuls take TF32 in both, as JAX's default does. PyTorch runs eagerly on
`--torch_threads` threads (default `os.cpu_count()`); JAX on its defaults. On a machine shared
with other jobs, PyTorch's OpenMP threads suffer most from oversubscription (on 2 busy cores, 2
threads ran 3x slower than 1).

Sizes: `benchmarks/timing.PRESETS` (LoRA rank 16 on every projection, logit-normal t, beta
500), tiny (ShapesWorld's preset, 256 tokens, 16 pairs) and mid (width 384, depth 12, 1,024
tokens, 4 pairs; its two CPU workers hold about 12 and 11 GB, more than a 24 GiB machine has
beside the parent process). The pair sampler has its own comparison: `vs_pytorch_sampler.py`.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os

import jax
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import torch_videodit as tv
from benchmarks.timing import (PRESETS, OursStep, build_step, make_config, matmul_ceiling,
                               step_flops, time_steps)
from densedpo_jax.training import host_memory
from densedpo_jax.training.builders import model_config

LOSSES = {"dpo": "flow_dpo", "fm": "flow_matching"}


# PyTorch.

def flow_dpo_loss(err_a, ref_a, err_b, ref_b, labels, beta: float):
  """`losses.flow_dpo_loss`: `[B]` errors; labels +1 (a preferred), -1 (b), 0 (tie: no loss)."""
  z = -(beta / 2) * labels * ((err_a - ref_a) - (err_b - ref_b))
  nontie = labels != 0
  return -(F.logsigmoid(z) * nontie).sum() / nontie.sum().clamp(min=1)


def make_optimizer(params, optim):
  """AdamW with `train_step.learning_rate_schedule`'s warm-up (clipping is in the step)."""
  opt = torch.optim.AdamW(params, lr=optim.lr, betas=(optim.b1, optim.b2), eps=1e-8,
                          weight_decay=optim.weight_decay)
  warm = lambda s: (optim.init_lr + (optim.lr - optim.init_lr) * min(s / max(optim.warmup_steps, 1),
                                                                    1.0)) / optim.lr
  return opt, torch.optim.lr_scheduler.LambdaLR(opt, warm)


def noised(x0, n: int, gen):
  """`(x_t, t, target)`: logit-normal `t [n]` and noise of `n` videos, repeated to fill `x0`."""
  t = torch.sigmoid(torch.randn(n, generator=gen, device=x0.device))
  eps = torch.randn((n,) + x0.shape[1:], generator=gen, device=x0.device)
  reps = x0.shape[0] // n
  t, eps = t.repeat(reps), eps.repeat(reps, 1, 1, 1, 1)
  tb = t.view(-1, 1, 1, 1, 1)
  return (1 - tb) * x0 + tb * eps, t, eps - x0


class TorchStep:
  """One PyTorch train step of config `c` (`'flow_dpo'`: LoRA only; `'flow_matching'`: all) on
  `device`; with `c.model.dtype` bfloat16 the forwards run under `torch.autocast` (parameters and
  optimiser in float32, as ours)."""

  def __init__(self, model: tv.VideoDiT, c, data: dict, device: str = "cpu"):
    self.model, self.c, self.device = model.to(device), c, device
    self.data = {k: torch.from_numpy(np.array(v)).to(device) for k, v in data.items()}
    if c.loss == "flow_dpo":
      for p in model.parameters():
        p.requires_grad_(False)
      self.params = tv.lora_parameters(model)
      for p in self.params:
        p.requires_grad_(True)
    else:
      self.params = list(model.parameters())
    self.opt, self.schedule = make_optimizer(self.params, c.optim)
    self.gen = torch.Generator(device).manual_seed(1)

  def loss(self):
    d, model = self.data, self.model
    if self.c.loss == "flow_matching":
      x_t, t, target = noised(d["latent"], d["latent"].shape[0], self.gen)
      drop = torch.rand(t.shape[0], generator=self.gen, device=t.device) < model.cfg.text_dropout
      return F.mse_loss(model(x_t, t, d["text_emb"], d["text_mask"], null_text=drop), target)
    n = d["latent_a"].shape[0]
    x_t, t, target = noised(torch.cat([d["latent_a"], d["latent_b"]]), n, self.gen)
    text, mask = torch.cat([d["text_emb"]] * 2), torch.cat([d["text_mask"]] * 2)
    err = ((model(x_t, t, text, mask) - target) ** 2).mean((1, 2, 3, 4))
    with torch.no_grad(), tv.adapters_disabled(model):
      ref = ((model(x_t, t, text, mask) - target) ** 2).mean((1, 2, 3, 4))
    return flow_dpo_loss(err[:n], ref[:n], err[n:], ref[n:], d["global_label"].float(),
                         self.c.dpo.beta)

  def __call__(self):
    with torch.autocast(self.device, torch.bfloat16, enabled=self.c.model.dtype == "bfloat16"):
      loss = self.loss()
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, self.c.optim.grad_clip)
    self.opt.step()
    self.schedule.step()
    return loss.item()


def torch_step(c, cfg, variables, data: dict, device: str = "cpu") -> TorchStep:
  """PyTorch's step of config `c` holding our model's (`cfg`) `variables`, on our batch `data`."""
  variables = jax.device_get(variables)
  model = tv.load_flax(tv.VideoDiT(cfg), variables["params"], variables.get("lora"))
  return TorchStep(model, c, data, device)


# Both, in one process or in a process each.

def framework_step(framework: str, preset: str, loss: str, dtype: str, device: str = "cpu"):
  """The `() -> loss` train step of `framework` ('ours' or 'torch') for `loss` at `preset`.

  PyTorch's step holds the weights and batch of ours (`build_step`, fixed seeds), built here
  without compiling ours.
  """
  _, _, latent, text, batch = PRESETS[preset]
  c = make_config(preset, loss, dtype)
  if framework == "ours":
    return OursStep(c, latent, text, batch)
  cfg, _, _, _, data, variables = build_step(c, latent, text, batch)
  return torch_step(c, cfg, variables, data, device)


def framework_steps(framework: str, preset: str, dtype: str, device: str = "cpu") -> dict:
  """`{'dpo': step, 'fm': step}` of `framework` (`framework_step` for each of `LOSSES`)."""
  return {short: framework_step(framework, preset, loss, dtype, device)
          for short, loss in LOSSES.items()}


def _serve(framework: str, preset: str, dtype: str, device: str, threads: int, conn):
  """A worker process: builds `framework_steps`, then runs the step named by each message."""
  host_memory.retain_freed_memory()
  torch.set_num_threads(threads)
  steps = framework_steps(framework, preset, dtype, device)
  conn.send("ready")
  while (short := conn.recv()) is not None:
    conn.send(steps[short]())


class StepWorker:
  """One framework's steps in a spawned process of its own, so that its heap and page faults
  are its own (docs/performance.md: at mid, one process shared by both brings the faults back).
  `self.step(short)` is a `() -> loss` that runs the step there and waits for it."""

  def __init__(self, framework: str, *args):
    ctx = multiprocessing.get_context("spawn")  # Not fork: JAX and PyTorch hold threads.
    self.name, (self.conn, child) = framework, ctx.Pipe()
    self.process = ctx.Process(target=_serve, args=(framework, *args, child), daemon=True)
    self.process.start()

  def _recv(self):
    try:
      return self.conn.recv()
    except EOFError:
      self.process.join()
      raise RuntimeError(f"the {self.name} worker process died (exit code "
                         f"{self.process.exitcode}); its traceback is above") from None

  def wait_ready(self):
    if (message := self._recv()) != "ready":
      raise RuntimeError(f"the {self.name} worker sent {message!r}, expected 'ready'")

  def step(self, short: str):
    def call() -> float:
      self.conn.send(short)
      return self._recv()
    return call

  def close(self):
    if self.process.is_alive():  # A dead one has said why; do not hide that behind a pipe error.
      self.conn.send(None)
    self.process.join()


def time_preset(preset: str, dtype: str, device: str, rounds: int, threads: int,
                one_process: bool) -> dict[str, float]:
  """Median seconds of 'ours dpo', 'torch dpo', 'ours fm', 'torch fm' (`time_steps`: in turn)."""
  if one_process:
    steps = {}
    for framework in ("ours", "torch"):
      for short, step in framework_steps(framework, preset, dtype, device).items():
        steps[f"{framework} {short}"] = step
    return time_steps(steps, rounds)
  workers = [StepWorker(framework, preset, dtype, device, threads)
             for framework in ("ours", "torch")]
  for worker in workers:
    worker.wait_ready()
  try:
    return time_steps({f"{w.name} {short}": w.step(short) for short in LOSSES for w in workers},
                      rounds)
  finally:
    for worker in workers:
      worker.close()


def parity(preset: str) -> float:
  """Forward parity of the two ports on random LoRA weights, in float32 at full matmul precision
  (no TF32 on a GPU), torch on the CPU."""
  _, _, latent, text, _ = PRESETS[preset]
  cfg32 = dataclasses.replace(model_config(make_config(preset, "flow_dpo")), attention_impl="xla")
  with jax.default_matmul_precision("highest"):
    return tv.parity_error(cfg32, latent, text[0], batch=2)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", nargs="+", default=["tiny"], choices=list(PRESETS),
                      help="mid needs about 25 GB of host memory on a CPU (two workers)")
  parser.add_argument("--steps", type=int, default=10, help="timed steps a row (median)")
  parser.add_argument("--quick", action="store_true", help="3 timed steps")
  parser.add_argument("--torch_threads", type=int, default=os.cpu_count())
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype of both (torch: autocast); parameters stay float32")
  parser.add_argument("--one_process", action="store_true",
                      help="both frameworks in this process (always so on a GPU)")
  args = parser.parse_args()
  # Torch on the GPU when JAX runs on one. Matmuls in float32 there take TF32 in both, as JAX's
  # default precision does.
  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  host_memory.retain_freed_memory()
  print(host_memory.describe(), flush=True)
  steps = 3 if args.quick else args.steps
  torch.set_num_threads(args.torch_threads)

  # Each framework in a process of its own on the CPU; on a GPU one process (two would each
  # preallocate most of its memory).
  one_process = args.one_process or device != "cpu"
  rows = []
  for preset in args.presets:
    print(f"{preset}:", flush=True)
    error = parity(preset)
    print(f"  forward parity (float32, LoRA on and off): max |torch - ours| / max |ours| = "
          f"{error:.1e}", flush=True)
    cfg = model_config(make_config(preset, "flow_dpo", args.dtype))
    _, _, latent, text, batch = PRESETS[preset]
    rows.append((preset, error, time_preset(preset, args.dtype, device, steps, args.torch_threads,
                                            one_process),
                 step_flops(cfg, "flow_dpo", latent, text, batch)))

  print(f"\ndevice: {jax.devices()[0].device_kind} ({os.cpu_count()} CPU cores), jax "
        f"{jax.__version__}, torch {torch.__version__} on {device} ({torch.get_num_threads()} "
        f"threads, eager); compute {args.dtype}; median of {steps} steps, "
        f"{'one process' if one_process else 'a process each'}\n")
  head = ("preset", "pairs", "ours DPO ms", "torch DPO ms", "DPO ours/torch", "ours FM ms",
          "torch FM ms", "FM ours/torch", "ours DPO/FM", "torch DPO/FM", "parity err")
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for preset, error, t, _ in rows:
    ms = {k: f"{v * 1e3:,.{1 if v < 0.1 else 0}f}" for k, v in t.items()}
    print(f"| {preset} | {PRESETS[preset][4]} | {ms['ours dpo']} | {ms['torch dpo']} | "
          f"{t['ours dpo'] / t['torch dpo']:.2f} | {ms['ours fm']} | {ms['torch fm']} | "
          f"{t['ours fm'] / t['torch fm']:.2f} | {t['ours dpo'] / t['ours fm']:.2f} | "
          f"{t['torch dpo'] / t['torch fm']:.2f} | {error:.1e} |")
  print("\nDPO: B pairs (2B videos, policy fwd+bwd with LoRA, reference fwd); FM: B videos, all "
        "parameters trained.")
  peak, dtype = matmul_ceiling(2048, 5)
  print(f"\nDPO step matmul work (`timing.step_flops`) against a jitted 2048^3 {dtype} "
        f"matmul ({peak / 1e9:.0f} GFLOP/s, best of 5):\n")
  print("| preset | GFLOP a step | ours GFLOP/s | torch GFLOP/s | ours/torch 0.8 needs | "
        "share of the matmul ceiling |")
  print("|---|---|---|---|---|---|")
  for preset, _, t, flops in rows:
    need = flops / (0.8 * t["torch dpo"])
    print(f"| {preset} | {flops / 1e9:.0f} | {flops / t['ours dpo'] / 1e9:.0f} | "
          f"{flops / t['torch dpo'] / 1e9:.0f} | {need / 1e9:.0f} GFLOP/s | {need / peak:.0%} |")


if __name__ == "__main__":
  main()
