"""The PyTorch port of VideoDiT used by benchmarks/vs_pytorch.py computes what ours computes.

The benchmark's ratios are only meaningful when both sides run the same network: the forwards
must agree to float32 rounding, and a port with a LoRA or RoPE mistake must fail the check.
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_videodit as tv  # noqa: E402
from benchmarks import vs_pytorch  # noqa: E402
from densedpo_jax.objectives import losses  # noqa: E402
from densedpo_jax.model import LoRAConfig, get_dit_config  # noqa: E402
from tests.helpers import TINY_MODEL, forward_gap_bound, gamma  # noqa: E402

# Grid (4, 2, 3): h != w, so swapped RoPE axes change the output. LoRA scale 2, not 1.
LATENT, TEXT_LEN = (4, 8, 12, 3), 6
CFG = get_dit_config("tiny", **TINY_MODEL, lora=LoRAConfig(rank=4, alpha=8.0))
# Float32 forwards of both libraries add in other orders: relative to the output's scale, at most
# forward_gap_bound over the blocks, whose longest reduction has the 256 timestep frequencies.
TOL = forward_gap_bound(1.0, CFG.depth, 256)


@pytest.fixture(scope="module")
def setup():
  """`(torch model, inputs, our outputs with LoRA on, off)`; the port holds random weights."""
  seed = int(np.random.randint(1 << 30))
  print(f"seed {seed}")
  flax_model, variables, torch_model = tv.ported(CFG, seed)
  inputs = tv.random_inputs(CFG, 3, LATENT, TEXT_LEN, seed + 1)
  refs = [tv.flax_forward(flax_model, variables, inputs, on) for on in (True, False)]
  return torch_model, inputs, refs


def _errors(torch_model, inputs, refs):
  return [tv.rel_error(tv.torch_forward(torch_model, inputs, on), ref)
          for on, ref in zip((True, False), refs)]


def test_forward_parity(setup):
  errors = _errors(*setup)
  assert max(errors) < TOL, errors
  refs = setup[2]
  assert tv.rel_error(refs[0], refs[1]) > 1e-3  # The adapter is not a no-op here.


def _lora_scale(model):
  model.blocks[1].self_attn.v.scale = 1.0


def _lora_off(model):
  model.blocks[0].mlp.fc_in.rank = 0


def _rope_axes(model):
  grid = (LATENT[0], LATENT[1] // 4, LATENT[2] // 4)
  cos, sin = tv.rope_3d(grid[::-1], CFG.head_dim, CFG.rope_theta)  # w-major token order.
  order = np.arange(np.prod(grid)).reshape(grid[::-1]).transpose(2, 1, 0).reshape(-1)
  model._rope[grid, torch.device("cpu")] = (cos[order], sin[order])


def _rope_interleaved(model):
  def interleaved(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[None, :, None], sin[None, :, None]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)
  return interleaved


@pytest.mark.parametrize("tamper", [_lora_scale, _lora_off, _rope_axes, _rope_interleaved])
def test_parity_catches_a_wrong_port(setup, tamper, monkeypatch):
  torch_model, inputs, refs = setup
  model = tv.VideoDiT(CFG)
  model.load_state_dict(torch_model.state_dict())
  model(*map(torch.from_numpy, inputs))  # Fills the RoPE cache, which _rope_axes replaces.
  rope = tamper(model)
  if rope is not None:
    monkeypatch.setattr(tv, "apply_rope", rope)
  assert max(_errors(model, inputs, refs)) > 1e-3


def test_load_flax_rejects_leftovers():
  _, variables, _ = tv.ported(CFG)
  params = dict(variables["params"], extra={"kernel": np.zeros((2, 2), np.float32)})
  with pytest.raises(RuntimeError, match="extra"):
    tv.load_flax(tv.VideoDiT(CFG), params, variables["lora"])


def test_flow_dpo_loss_matches_ours():
  rng = np.random.default_rng(int(np.random.randint(1 << 30)))
  errs = [rng.uniform(0, 2, 6).astype(np.float32) for _ in range(4)]
  labels = np.array([1, -1, 0, 1, -1, 1], np.int32)
  ref, _ = losses.flow_dpo_loss(*errs, labels=labels, beta=50.0)
  out = vs_pytorch.flow_dpo_loss(*map(torch.from_numpy, errs), torch.from_numpy(labels).float(),
                                 50.0)
  # z = 25 * signed sum of four errors rounds within gamma_4 of their absolute sum in each
  # library; -log sigmoid moves by at most |dz|; the mean over the pairs adds gamma_6.
  tol = (max(25 * 2 * gamma(4) * sum(abs(e[i]) for e in errs) for i in range(6))
         + 2 * gamma(6) * float(ref))
  np.testing.assert_allclose(out.item(), float(ref), rtol=0, atol=tol)


@pytest.mark.e2e
def test_step_worker_runs_steps_in_its_own_process():
  """The benchmark's worker process runs the step it is sent and returns its loss: a fresh
  adapter (lora_b = 0) makes the policy the reference, so the first DPO loss is -log sigmoid(0)."""
  worker = vs_pytorch.StepWorker("torch", "tiny", "float32", "cpu", 1)
  try:
    worker.wait_ready()
    assert worker.process.pid != os.getpid()
    dpo, fm = worker.step("dpo")(), worker.step("fm")()
  finally:
    worker.close()
  np.testing.assert_allclose(dpo, np.log(2.0), rtol=1e-6)
  assert 1.5 < fm < 2.5  # Velocity eps - x0 of unit Gaussians: mean square about 2.
  assert worker.process.exitcode == 0


@pytest.mark.e2e
def test_a_dead_worker_is_named():
  worker = vs_pytorch.StepWorker("torch", "no_such_preset", "float32", "cpu", 1)
  with pytest.raises(RuntimeError, match="torch worker process died"):
    worker.wait_ready()
