"""The memory planner: the analytic plan agrees with XLA's compiled memory analysis of the real
train step (8 fake devices, FSDP) within the margin docs/scaling.md states (35%)."""
import jax
import pytest

from configs import dense
from densedpo_jax import plan
from densedpo_jax.training.builders import model_config
from densedpo_jax.training.builders import with_overrides

LATENT, TEXT = (5, 32, 32), 64


REMAT = {"model.remat_policy": "full", "model.scan_layers": True}


@pytest.mark.parametrize("model,mesh", [
    (REMAT, (1, 8, 1, 1)),
    # The other layouts compile a step each: whole runs' time, so outside the quick tier.
    pytest.param({"model.scan_layers": True}, (1, 8, 1, 1), marks=pytest.mark.e2e),
    pytest.param({**REMAT, "model.attention_impl": "blockwise"}, (1, 8, 1, 1),
                 marks=pytest.mark.e2e),
    # Context parallelism: each video's tokens over 2 devices.
    pytest.param(REMAT, (1, 4, 1, 2), marks=pytest.mark.e2e)])
def test_plan_agrees_with_the_compiled_step(model, mesh):
  config = with_overrides(dense.get_config(), **{
      "data.batch_size": 8, "mesh.shape": mesh, "model.preset": "small", **model})
  planned = plan.plan(config, model_config(config), LATENT, TEXT,
                      dict(zip(("data", "fsdp", "tensor", "sequence"), mesh)))
  m = plan.compiled(config, LATENT, TEXT, 8)
  total = m.argument_size_in_bytes + m.temp_size_in_bytes
  assert 0.65 * total < planned["total"] < 1.35 * total, (planned, total)


@pytest.mark.skipif(jax.devices()[0].platform == "gpu", reason="cuDNN attention runs here")
def test_a_gpu_only_attention_is_named_in_one_line_on_other_machines(capsys):
  with pytest.raises(SystemExit, match=r"plan --compiled: attention_impl='cudnn' runs on GPU only "
                                       r"and this machine's devices are CPU: pass "
                                       r"--config.model.attention_impl=blockwise"):
    plan.main(["--config=configs/dense.py", "--compiled", "--config.model.preset=small",
               "--config.model.attention_impl=cudnn"])
  assert "planned" in capsys.readouterr().out  # The analytic plan still printed first.


def test_the_ti2v_first_frame_condition_is_compiled_into_the_step():
  """TI2V trains text-to-video or image-to-video by its records: `condition='first_frame'`
  lowers the step with a one-frame condition, whose bf16 bytes (its share per device) are the
  only argument the compiled step gains."""
  config = with_overrides(dense.get_config(), **{
      "data.batch_size": 8, "mesh.shape": (8, 1, 1, 1), "model.family": "wan",
      "model.preset": "wan2.2-ti2v-5b", "model.width": 32, "model.depth": 1,
      "model.num_heads": 2, "model.ffn_dim": 64, "model.text_dim": 16, "model.text_len": 8,
      "model.in_channels": 8, "model.patch_size": (1, 2, 2), "model.scan_layers": True,
      "model.remat_policy": "full", "model.attention_impl": "xla"})
  latent = (3, 8, 8)
  t2v = plan.compiled(config, latent, 8, 8)
  i2v = plan.compiled(config, latent, 8, 8, condition="first_frame")
  cond_bytes = 8 * 1 * 8 * 8 * 8 * 2 // 8  # [B=8, 1, 8, 8, C=8] bf16 over 8 data shards.
  assert i2v.argument_size_in_bytes - t2v.argument_size_in_bytes == cond_bytes
  with pytest.raises(ValueError, match="condition='last_frame'; expected first_frame or none"):
    plan.compiled(config, latent, 8, 8, condition="last_frame")
