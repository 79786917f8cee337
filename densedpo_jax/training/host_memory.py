"""Host memory: keep freed memory in the process, so a CPU train step does not page-fault its
temporaries in again on every call.

XLA:CPU allocates an executable's temporaries (about 1 GB for the tiny preset's DPO step) on every
call, and glibc serves an allocation that large with a fresh `mmap` and returns it to the kernel
with `munmap` when the call ends: every call then faults in and zeroes a gigabyte of 4 KiB pages
(0.7 s of system time per tiny DPO step on 2 cores, a fifth to a quarter of the step;
`DENSEDPO_MALLOC=default python -m benchmarks.vs_pytorch` shows it). `retain_freed_memory` tells
glibc to serve every allocation from one heap that is never trimmed (`mallopt`: one arena, no
`mmap`, no trim), so the second call reuses the pages of the first. The process's resident memory then stays at its
peak instead of falling between steps. Accelerator memory is not host memory: on GPU and TPU this
changes only the host-side buffers.

Called by the entry points (`main.py`, the benchmarks) before JAX starts its threads; a no-op
(returning False) off glibc, and when `DENSEDPO_MALLOC=default` is set. Not for the test
suite: many compiles and few steps are slower with it (tests/test_pipeline.py 74 s against 62 s).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
ENV = "DENSEDPO_MALLOC"
_applied = False


def retain_freed_memory() -> bool:
  """Sets glibc's allocator to reuse freed memory (see the module doc); True if it was set.

  Threads created afterwards share the one arena (JAX's worker threads allocate the large
  buffers); call it before the first JAX computation.
  """
  global _applied
  if _applied:
    return True
  if os.environ.get(ENV, "retain") == "default" or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
    libc.gnu_get_libc_version  # Only glibc's mallopt takes these parameters.
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  # -1 as the trim threshold disables trimming (mallopt(3)); mmap off keeps large blocks in the heap.
  _applied = all(mallopt(param, value) == 1 for param, value in
                 ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
  return _applied


def describe() -> str:
  """One line for a log or a benchmark's header: which host allocation mode this process runs."""
  if _applied:
    return "host memory: freed memory retained (glibc mallopt; DENSEDPO_MALLOC=default to compare)"
  return "host memory: the allocator's defaults (large temporaries mmapped and unmapped each call)"
