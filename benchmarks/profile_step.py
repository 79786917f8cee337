"""Where the DPO step's time goes: a `jax.profiler` trace joined to the optimised HLO, by layer part.

    python -m benchmarks.profile_step                  # tiny preset, 2 traced steps
    python -m benchmarks.profile_step --preset mid --top 30

The step is `benchmarks/timing.py`'s (Flow-DPO, LoRA rank 16 on every projection, one
device, host memory retained as in `main.py`). After a warm-up step, `--steps` steps run under
`jax.profiler.trace`. Every kernel the trace records (one XLA fusion, dot or copy) is matched by
name to the compiled module's instruction, whose `op_name` metadata says which model layer and
which pass it comes from: the forward passes (the policy's and the reference's) or the
backward (`transpose(jvp(...))`). Times are summed over both the CPU's worker threads, so a
step's op time is more than its wall time.

Prints two tables, in ms of op time per step:
  parts   per layer part (`self_attn/core` is the attention itself: logits, softmax, value
          product; `self_attn/q` its q projection with its LoRA), forward and backward
  kernels the `--top` most expensive kernels (one row for all layers), with their kind (`ynn_fusion`: a YNNPACK
          kernel; `dot_general`: XLA's own dot; `*_fusion`: XLA's emitted loops)
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax

from benchmarks.timing import PRESETS, OursStep, make_config
from densedpo_jax.training import host_memory

_OP_NAME = re.compile(r"^\s*%?([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", re.M)
_PROJECTIONS = ("q", "k", "v", "out", "q_norm", "k_norm")


def op_names(hlo_text: str) -> dict[str, str]:
  """`{instruction name: op_name}` of a compiled module's text."""
  return {m.group(1): m.group(2) for m in _OP_NAME.finditer(hlo_text)}


def layer_part(op_name: str) -> tuple[str, str]:
  """`(part, pass)` of an `op_name`: e.g. `('self_attn/core', 'backward')`."""
  pass_ = "backward" if "transpose(jvp(" in op_name else "forward"
  path = re.sub(r"block_\d+/", "", op_name.split("VideoDiT)")[-1].lstrip(")/"))
  parts = path.split("/")
  if parts[0] in ("self_attn", "cross_attn") and len(parts) > 1:
    return f"{parts[0]}/{parts[1] if parts[1] in _PROJECTIONS else 'core'}", pass_
  if parts[0] == "mlp" and len(parts) > 1:  # mlp/fc_in/dot_general, or mlp/tanh: the GELU.
    return f"mlp/{parts[1] if len(parts) > 2 else 'gelu'}", pass_
  if "VideoDiT" not in op_name:
    return "step (loss, optimiser, noise)", "-"
  return parts[0], pass_


def kernel_times(trace_dir: str, steps: int) -> dict[str, float]:
  """`{kernel name: ms a step}` from the trace's complete events, runtime bookkeeping left out."""
  [path] = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  times = collections.Counter()
  for event in json.load(gzip.open(path))["traceEvents"]:
    if event.get("ph") == "X" and not event["name"].startswith(("Thunk", "$", "Slinky", "Pjit")):
      times[event["name"]] += event["dur"] / 1e3 / steps
  return times


def _table(title: str, header: str, rows) -> None:
  print(f"\n{title}\n\n| {header} |\n|{'---|' * (header.count('|') + 1)}")
  for row in rows:
    print("| " + " | ".join(row) + " |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
  parser.add_argument("--steps", type=int, default=2, help="traced steps (times are per step)")
  parser.add_argument("--top", type=int, default=15, help="rows of the kernel table")
  args = parser.parse_args()
  host_memory.retain_freed_memory()
  print(host_memory.describe(), flush=True)
  _, _, latent, text, batch = PRESETS[args.preset]
  step = OursStep(make_config(args.preset, "flow_dpo"), latent, text, batch)
  # Compiled once, ahead of time: the step runs the executable whose text names the kernels.
  step.step = step.step.lower(step.state, step.frozen, step.data, step.key).compile()
  names = op_names(step.step.as_text())
  step()  # Warm-up.
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(args.steps):
        step()
    times = kernel_times(trace_dir, args.steps)

  total = sum(times.values())
  parts = collections.Counter()
  for kernel, ms in times.items():
    parts[layer_part(names.get(kernel, ""))] += ms
  print(f"\n{args.preset}, Flow-DPO on {batch} pairs: {total:,.0f} ms of op time a step "
        f"({len(times)} kernels)")
  _table("Per layer part", "part | pass | ms a step | share",
         ((p, s, f"{ms:,.1f}", f"{ms / total:.1%}") for (p, s), ms in parts.most_common()))
  kernels = collections.Counter()  # The same kernel in every layer is one row.
  for kernel, ms in times.items():
    kernels[re.sub(r"\.\d+$", "", kernel), re.sub(r"block_\d+", "block_*",
                                                   names.get(kernel, "?"))] += ms
  _table("Most expensive kernels, summed over layers", "ms a step | kind | op_name",
         ((f"{ms:,.1f}", kind, op) for (kind, op), ms in kernels.most_common(args.top)))


if __name__ == "__main__":
  main()
