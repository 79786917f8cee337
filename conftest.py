"""Test setup for every test folder (tests/, benchmarks/): the CPU, eight fake devices so sharding
tests can build a real mesh, and one compilation cache for the session. Set before JAX starts."""
import atexit
import os
import shutil
import tempfile

# Must run before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session (and the subprocesses it starts): many tests
# build the same tiny train step, sampler or evaluation again, and the experiment test alone
# compiles each of them a dozen times. The folder is new per session, so no run reads
# another's executables.
_CACHE = tempfile.mkdtemp(prefix="densedpo_jax_xla_cache_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
