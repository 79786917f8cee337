"""`benchmarks/profile_step.py` sorts op names into layer parts and joins a real trace to the
compiled module's layer names."""
import tempfile

import jax
import jax.numpy as jnp

from benchmarks import profile_step


def test_op_names_are_sorted_into_layer_parts():
  part = profile_step.layer_part
  assert part("jit(step)/transpose(jvp(VideoDiT))/block_3/self_attn/bhnd,bhmd->bhnm/dot_general"
              ) == ("self_attn/core", "backward")
  assert part("jit(step)/jvp(VideoDiT)/block_0/self_attn/reduce_max") == ("self_attn/core",
                                                                          "forward")
  assert part("jit(step)/jvp(VideoDiT)/block_0/cross_attn/q/dot_general") == ("cross_attn/q",
                                                                             "forward")
  assert part("jit(step)/jvp(VideoDiT)/block_1/mlp/tanh") == ("mlp/gelu", "forward")
  assert part("jit(step)/transpose(jvp(VideoDiT))/block_1/mlp/fc_in/dot_general") == (
      "mlp/fc_in", "backward")
  assert part("jit(step)/jvp(VideoDiT)/final_proj/dot_general") == ("final_proj", "forward")
  assert part("jit(step)/add")[1] == "-" and part("")[1] == "-"


def test_a_real_trace_joins_to_the_compiled_modules_op_names():
  a = jax.random.normal(jax.random.key(0), (512, 512))
  f = jax.jit(lambda x: jnp.tanh(x @ x.T))
  names = profile_step.op_names(f.lower(a).compile().as_text())
  jax.block_until_ready(f(a))
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(3):
        jax.block_until_ready(f(a))
    times = profile_step.kernel_times(trace_dir, steps=3)
  joined = {k: ms for k, ms in times.items() if "dot_general" in names.get(k, "")}
  # The matmul (2 x 512^3 FLOPs) is most of the work, and it is found by its layer name.
  assert joined and sum(joined.values()) > 0.5 * sum(times.values())
