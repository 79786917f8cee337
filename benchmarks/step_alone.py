"""One framework's DPO step alone in a process: step time, CPU time, page faults a step.

    python benchmarks/step_alone.py --framework ours --preset mid --steps 3
    python benchmarks/step_alone.py --framework torch --preset mid --steps 3

The steps are `vs_pytorch.py`'s (Flow-DPO, same config and weights), with the host-memory fix
on. With `--one_process`, `vs_pytorch.py` runs both frameworks in one process, where at mid
their steps share one retained glibc heap and page faults come back (docs/performance.md); this
script shows each alone with its faults. Run the two one after the other: they are not
interleaved, so machine drift applies (`vs_pytorch.py`'s workers interleave them).

CPU time over wall time says how many cores the step keeps busy (a spinning OpenMP thread
counts as busy).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # For configs/.
from densedpo_jax import host_memory  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--framework", choices=("ours", "torch"), required=True)
  parser.add_argument("--preset", default="mid", choices=("tiny", "mid"))
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  host_memory.retain_freed_memory()
  print(host_memory.describe(), flush=True)
  from benchmarks.vs_pytorch import PRESETS, framework_step
  batch = PRESETS[args.preset][3]
  step = framework_step(args.framework, args.preset, "flow_dpo", "float32")
  step()  # Warm-up (compile, first allocations).
  print(f"{args.framework}, {args.preset}, Flow-DPO on {batch} pairs\n")
  print("| step | seconds | CPU s (user + system) | cores busy | minor faults | system s |\n"
        "|---|---|---|---|---|---|")
  rows = []
  for i in range(args.steps):
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    step()
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    system = after.ru_stime - before.ru_stime
    cpu = after.ru_utime - before.ru_utime + system
    rows.append((seconds, cpu))
    print(f"| {i + 1} | {seconds:.2f} | {cpu:.2f} | {cpu / seconds:.2f} | "
          f"{after.ru_minflt - before.ru_minflt:,} | {system:.1f} |", flush=True)
  seconds, cpu = (statistics.median(column) for column in zip(*rows))
  print(f"\nmedians: {seconds:.3f} s a step, {cpu:.3f} CPU s, {cpu / seconds:.2f} of "
        f"{os.cpu_count()} cores busy")

if __name__ == "__main__":
  main()
