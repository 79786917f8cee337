"""host_memory.retain_freed_memory: a freed large buffer is reused without new page faults."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Allocates, touches and frees a 128 MiB buffer twice; prints whether the mode was set and the
# minor page faults of the second round (the first round faults the pages in either way).
PROBE = """
import resource, sys
sys.path.insert(0, {root!r})
from densedpo_jax.training import host_memory
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
print(host_memory.retain_freed_memory())
def touch():  # Through malloc itself: NumPy would advise huge pages for a buffer this large.
  p = libc.malloc(128 << 20)
  ctypes.memset(p, 1, 128 << 20)
  libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = (128 << 20) // 4096  # 4 KiB pages of the buffer.


def _probe(mode: str) -> tuple[str, int]:
  env = dict(os.environ, DENSEDPO_MALLOC=mode)
  out = subprocess.run([sys.executable, "-c", PROBE.format(root=ROOT)], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_retained_memory_is_reused_without_page_faults():
  applied, faults = _probe("retain")
  assert applied == "True"
  assert faults < PAGES // 20, f"{faults} page faults on reusing a freed 128 MiB buffer"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_default_mode_leaves_the_allocator_alone():
  applied, faults = _probe("default")
  assert applied == "False"
  # glibc's default returns a block this large to the kernel, so touching it again faults.
  assert faults > PAGES // 20, f"only {faults} page faults: the freed block was kept"
