"""The trainer: each loss learns, only LoRA moves in DPO, sharding, resume, NaN guard."""
import logging
import os

import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import SingleDeviceSharding
from PIL import Image

from densedpo_jax.training import checkpointing, train
from densedpo_jax.training.builders import model_config
from densedpo_jax.model import pretrained
from densedpo_jax.model import VideoDiT
from densedpo_jax.training.train_step import _accumulated_grads
from tests.helpers import C, D, H, L, T, W, gamma, tiny_config, write_pairs, write_videos

@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  return write_videos(str(root / "videos")), write_pairs(str(root / "pairs"))


@pytest.fixture(scope="module")
def base_workdir(data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("base"))
  history = train.train_and_evaluate(tiny_config("flow_matching", data[0], total_steps=30), workdir)
  losses = [history[s]["loss"] for s in sorted(history)]
  return workdir, losses


@pytest.mark.e2e
def test_flow_matching_loss_goes_down(base_workdir):
  _, losses = base_workdir
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_samples_are_written_as_png_gif_and_tensorboard(data, tmp_path):
  config = tiny_config("flow_matching", data[0], total_steps=4,
                       **{"sample.every": 2, "sample.num_videos": 3, "sample.num_steps": 4})
  train.train_and_evaluate(config, str(tmp_path))
  names = sorted(os.listdir(tmp_path / "samples"))
  assert names == ["step_0000002.gif", "step_0000002.png", "step_0000004.gif", "step_0000004.png"]
  png = np.asarray(Image.open(tmp_path / "samples" / "step_0000004.png"))
  assert png.shape == (3 * H, T * W, 3)  # One row a prompt, one column a frame.
  # Training moved the model between the two previews (same prompts, same noise).
  assert not np.array_equal(png, np.asarray(Image.open(tmp_path / "samples" / "step_0000002.png")))


@pytest.mark.e2e
def test_pretraining_continues_from_exported_weights(data, base_workdir, tmp_path):
  config = tiny_config("flow_matching", data[0], total_steps=1, init_from=base_workdir[0],
                       ema_decay=0.999, **{"optim.lr": 0.0})
  history = train.train_and_evaluate(config, str(tmp_path))
  # The base run ended near loss 0.1-0.5; a fresh model starts above 1.
  assert history[1]["loss"] < 0.8 * base_workdir[1][0]
  target = checkpointing.abstract_like(*_params_target(model_config(config)))
  before = pretrained.read_params(base_workdir[0], target)
  after = pretrained.read_params(str(tmp_path), target)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                         after, before)


@pytest.mark.e2e
@pytest.mark.parametrize("loss", ["dense_dpo", "flow_dpo"])
def test_dpo_learns_the_preference_and_moves_only_lora(loss, data, base_workdir, tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(loss, data[1], total_steps=25, init_from=base_workdir[0])
  history = train.train_and_evaluate(config, workdir)
  first, last = history[1], history[25]
  # Policy == reference at start: each unit's z is only the rounding gap of the LoRA-on and
  # LoRA-off passes (they compile separately, so step 1's accuracy is a coin flip). Then the loss
  # mean(softplus(-z)) is log 2 - mean(z) / 2 + mean(z^2) / 8 + ..., and a policy that differed
  # (|z| of 1e-2 or more) would leave a second-order term above the float32 rounding of a mean of
  # at most 32 softplus values near log 2 (a gamma_32 of each of the two sides).
  np.testing.assert_allclose(first["loss"], np.log(2) - first["reward_margin"] / 2, rtol=0,
                             atol=2 * gamma(32) * np.log(2))
  assert np.mean([history[s]["implicit_acc"] for s in range(21, 26)]) > 0.7
  assert last["loss"] < 0.6

  # The exported model is the base with LoRA folded in: every non-adapted leaf is bit-identical.
  cfg = model_config(config)
  shapes = checkpointing.abstract_like(*_params_target(cfg))
  base = pretrained.read_params(base_workdir[0], shapes)
  tuned = pretrained.read_params(workdir, shapes)
  flat_base = jax.tree_util.tree_flatten_with_path(base)[0]
  flat_tuned = dict(jax.tree_util.tree_flatten_with_path(tuned)[0])
  changed = [jax.tree_util.keystr(p) for p, v in flat_base if not np.array_equal(v, flat_tuned[p])]
  assert changed and all("kernel" in p and ("attn" in p or "mlp']['fc" in p) for p in changed)


def _params_target(cfg):
  """Abstract params of `cfg` and single-device shardings: a restore target."""
  model = VideoDiT(cfg)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, T, H, W, C)),
                                             jnp.zeros((1,)), jnp.zeros((1, L, D)),
                                             jnp.ones((1, L), bool)))
  params = nn.unbox(shapes["params"])
  return params, jax.tree_util.tree_map(lambda _: SingleDeviceSharding(jax.devices()[0]), params)


@pytest.mark.e2e
def test_sharded_mesh_matches_single_device(data, base_workdir, tmp_path):
  # From the trained base: a fresh model's zero-initialised output layer would give the adapter
  # no gradient at all. Step 1 is log 2 (policy == reference); steps 2-3 differ, so compare those.
  one = tiny_config("dense_dpo", data[1], total_steps=3, init_from=base_workdir[0],
                    **{"mesh.shape": (1, 1, 1), "mesh.num_devices": 1})
  eight = tiny_config("dense_dpo", data[1], total_steps=3, init_from=base_workdir[0],
                      **{"mesh.shape": (2, 2, 2)})
  h1 = train.train_and_evaluate(one, str(tmp_path / "one"))
  h8 = train.train_and_evaluate(eight, str(tmp_path / "eight"))
  for s in (2, 3):
    np.testing.assert_allclose(h8[s]["loss"], h1[s]["loss"], rtol=2e-4)
    np.testing.assert_allclose(h8[s]["grad_norm"], h1[s]["grad_norm"], rtol=2e-3)
  assert h1[3]["loss"] != h1[2]["loss"]


@pytest.mark.e2e
@pytest.mark.parametrize("resume_mesh", [(-1, 1, 1), (2, 2, 2)])
def test_resume_equals_uninterrupted(data, tmp_path, resume_mesh):
  kw = dict(checkpoint_every=3)
  straight = train.train_and_evaluate(
      tiny_config("flow_matching", data[0], total_steps=6, **kw), str(tmp_path / "straight"))
  part = str(tmp_path / "part")
  train.train_and_evaluate(tiny_config("flow_matching", data[0], total_steps=3, **kw), part)
  resumed = train.train_and_evaluate(tiny_config("flow_matching", data[0], total_steps=6,
                                                 **{"mesh.shape": resume_mesh}, **kw), part)
  assert sorted(resumed) == [4, 5, 6]
  for s in (4, 5, 6):
    if resume_mesh == (-1, 1, 1):  # Same mesh: bitwise.
      assert resumed[s]["loss"] == straight[s]["loss"]
    else:  # Another mesh: the same math, reduced in another order.
      np.testing.assert_allclose(resumed[s]["loss"], straight[s]["loss"], rtol=1e-4)


@pytest.mark.e2e
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
  config = tiny_config("flow_matching", data[0], total_steps=20, checkpoint_every=1,
                       **{"optim.lr": 1e30, "optim.grad_clip": 0.0})
  with pytest.raises(train.NonFiniteLossError, match=r"at step \d+") as err:
    train.train_and_evaluate(config, str(tmp_path))
  bad_step = int(str(err.value).split("at step ")[1].split(";")[0])
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert steps and max(steps) < bad_step


def test_batch_not_divisible_by_the_mesh_is_an_error(data, tmp_path):
  config = tiny_config("flow_matching", data[0], **{"data.batch_size": 4, "mesh.shape": (8, 1, 1)})
  with pytest.raises(ValueError, match="batch_size=4 is not divisible by the 8 devices"):
    train.train_and_evaluate(config, str(tmp_path))


def test_dpo_without_lora_rank_is_an_error(data, tmp_path):
  with pytest.raises(ValueError, match="lora.rank"):
    train.train_and_evaluate(tiny_config("dense_dpo", data[1], **{"lora.rank": 0}), str(tmp_path))


@pytest.mark.e2e
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data, tmp_path):
  workdir = str(tmp_path / "run")
  script = (
      "import sys; sys.path.insert(0, %r)\n"
      "from tests.helpers import tiny_config\n"
      "from densedpo_jax.training import train\n"
      "c = tiny_config('flow_matching', %r, total_steps=100000, checkpoint_every=100000)\n"
      "train.train_and_evaluate(c, %r)\n" % (os.getcwd(), data[0], workdir))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    events = [f for f in os.listdir(workdir)] if os.path.isdir(workdir) else []
    if any(f.startswith("events.out") for f in events) and os.path.getsize(
        os.path.join(workdir, [f for f in events if f.startswith("events.out")][0])) > 200:
      break  # Metrics of a few steps have been written: training is under way.
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  steps = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
  assert len(steps) == 1 and 0 < steps[0] < 100000


@pytest.mark.parametrize("accum_steps", [2, 4])
def test_gradient_accumulation_equals_the_full_batch(accum_steps):
  rng = np.random.default_rng()
  w = {"w": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
  batch = {"x": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
           "y": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}

  def loss_fn(params, frozen, b, key):  # Mean squared error of a linear model; key unused.
    err = b["x"] @ params["w"] - b["y"]
    loss = jnp.mean(err ** 2)
    return loss, ({"loss": loss}, jnp.float32(err.shape[0]))  # Weight: rows averaged over.

  metrics, grads = _accumulated_grads(loss_fn, w, {}, batch, jax.random.key(0), accum_steps)
  x, y, wv = (np.asarray(a, np.float64) for a in (batch["x"], batch["y"], w["w"]))
  want_grad = 2.0 / 8 * x.T @ (x @ wv - y)  # d/dw of the full-batch mean, in float64.
  np.testing.assert_allclose(grads["w"], want_grad, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], np.mean((x @ wv - y) ** 2), rtol=1e-5)


def test_a_batch_larger_than_the_data_and_a_rank_above_the_width_are_said(tmp_path, caplog):
  data = write_pairs(str(tmp_path / "pairs"))  # 16 pairs; the tiny model is 32 wide.
  config = tiny_config("dense_dpo", data, total_steps=1, **{
      "data.batch_size": 32, "lora.rank": 48, "mesh.num_devices": 1})
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  text = caplog.text
  assert "config.data.batch_size=32 is larger than the dataset (16 records)" in text
  assert "config.lora.rank=48 is above the model width 32" in text


def test_objective_variants_train_end_to_end(tmp_path):
  """dpo.gt_lambda with pairs carrying their ground truth, with DPO-Positive, RPO's winner term
  and summed pairs: the trainer logs the ground-truth term and the winners gone worse; at step 1
  (policy == reference: LoRA B = 0) the hinge is 0 and the loss is the DPO loss, plus
  winner_lambda times each unit's winner error, plus gt_lambda times the ground-truth term."""
  pairs = write_pairs(str(tmp_path / "pairs"), with_gt=True)
  config = tiny_config("dense_dpo", pairs, total_steps=2, **{
      "dpo.gt_lambda": 0.5, "dpo.positive_lambda": 1.0, "dpo.pair_reduction": "sum",
      "dpo.winner_lambda": 2.0})
  history = train.train_and_evaluate(config, str(tmp_path / "run"))
  first = history[1]
  assert first["gt_flow_loss"] > 0 and 0.0 <= first["winner_worse_frac"] <= 1.0
  # Summed over a pair's 4 latent frames, every one non-tie here: 4 log 2 (z and the hinge are
  # only the rounding gap of the LoRA-on and LoRA-off passes) plus 2.0 times the 4 winners'
  # errors, plus the ground-truth term.
  dpo_part = first["loss"] - 0.5 * first["gt_flow_loss"]
  np.testing.assert_allclose(dpo_part, 4 * np.log(2) + 2.0 * 4 * first["policy_err_win"], rtol=1e-3)
  plain = tiny_config("dense_dpo", write_pairs(str(tmp_path / "plain")), total_steps=1,
                      **{"dpo.gt_lambda": 0.5})
  with pytest.raises(ValueError, match=r"no 'gt_latent'"):
    train.train_and_evaluate(plain, str(tmp_path / "plain_run"))
