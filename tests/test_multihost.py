"""Two JAX processes x 4 CPU devices on 127.0.0.1 (jax.distributed, gloo): the same DenseDPO
losses and previews as one process x 8 devices, SIGTERM to one process stops both at the same
saved step, and that checkpoint is refused by a one-process run with a message naming both
counts; pair generation split over both processes and joined once, labels written once. And
`gs://` workdirs: their paths go through etils.epath, never os.path.abspath."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from etils.epath import gpath, testing as epath_testing
from flax import linen as nn
from orbax.checkpoint._src.path import gcs_utils
from PIL import Image

from densedpo_jax import distributed, previews
from densedpo_jax.training import checkpointing, train
from densedpo_jax.training.builders import model_config
from densedpo_jax.model import LoRAConfig, build, pretrained
from densedpo_jax.data import arrayrecord_io, tfds_builder
from tests.helpers import (C, D, H, L, T, W, euler_gap_bound, evaluation_setup, forward_gap_bound,
                           gamma, tiny_config, write_pairs)

SETTINGS = {"log_every": 1, "checkpoint_every": 3, "sample.every": 3, "sample.num_videos": 2,
            "sample.num_steps": 2}
PROLOGUE = """
import json, sys
sys.path.insert(0, {root!r})
from densedpo_jax import distributed
pid = {pid}
if pid is not None:
  distributed.initialize("127.0.0.1:{port}", 2, pid)
"""
TRAIN = """
from densedpo_jax.training import train
from tests.helpers import tiny_config
config = tiny_config("dense_dpo", {data!r}, total_steps={steps}, init_from={base!r}, **{settings!r})
print("RESULT", json.dumps(train.train_and_evaluate(config, {workdir!r})), flush=True)
"""
PAIRS_AND_LABELS = """
import jax
from flax import linen as nn
from configs import label as label_config, pairs as pairs_config
from densedpo_jax.tasks import pairs
from densedpo_jax.data import arrayrecord_io, tfds_builder
from densedpo_jax.labeling import task
from densedpo_jax.model import VideoDiT, get_dit_config
model = VideoDiT(get_dit_config("tiny", width=32, depth=2, num_heads=2, text_dim=64))
zeros = jax.numpy.zeros
params = nn.unbox(model.init(jax.random.key(0), zeros((1, 16, 16, 16, 3)), zeros((1,)),
                             zeros((1, 16, 64)), jax.numpy.ones((1, 16), bool))["params"])
c = pairs_config.get_config("guided")
c.pairs.update(num_pairs=5, pairs_per_part=1, batch_size=1, num_steps=2, out_dir={workdir!r})
side = pairs.generate_pairs(c, arrayrecord_io.ShardedSource({data!r}, "videos"), params, model)
c = label_config.get_config("segment")
c.label.update(in_dir={workdir!r}, out_dir={workdir!r}, num_previews=2)
stats = task.main(c)
def fail():
  raise ValueError("no labels")
try:
  distributed.on_main(fail)
except Exception as e:
  error = f"{{type(e).__name__}}: {{e}}"
print("RESULT", json.dumps([side, stats, error], default=float), flush=True)
"""

EVALUATE = """
import numpy as np
from densedpo_jax.tasks import evaluate
from densedpo_jax.objectives import sampling
from tests.helpers import evaluation_setup
params, records, spec, cfg = evaluation_setup({data!r})
calls, make = [], sampling.make_video_sampler
def counted(*args, **kwargs):
  run = make(*args, **kwargs)
  def counted_run(params, keys, text, mask, cond=None):
    calls.append(len(keys))
    return run(params, keys, text, mask, cond)
  return counted_run
sampling.make_video_sampler = counted
np.save({out!r} + f"/videos{{pid}}.npy", evaluate.sample_model(params, records, spec, cfg))
print("RESULT", json.dumps(calls), flush=True)
"""


N_PAIRS = tiny_config("dense_dpo", "unused").data.batch_size  # One pair a device in both runs.
GAMMA = gamma(N_PAIRS - 1)  # The error bound of a float32 sum of N_PAIRS terms (Higham).


def multihost_tolerances(one: dict, lr: float, n_trainable: int
                         ) -> tuple[dict[int, float], float]:
  """Bounds on |2-process - 1-process| for the loss at steps 1-3, and on grad_norm's relative
  difference at steps 1-2; `one` is the 1-process history. Both runs execute the same per-device
  program on the same pair (one a device); only the all-reduces over the 8 devices (the mean of
  the pairs' losses, the sum of their gradients) add in another order.

  Steps 1 and 2 run at the same parameters (the warm-up starts at lr 0, so step 1 moves none):
  - Loss: a mean of 8 non-negative pair losses; each run's float32 sum errs by at most
    gamma_7 * sum|terms| = gamma_7 * 8 * loss (Higham, Thm 3.1), so the runs differ by at most
    2 * gamma_7 * loss (the division by 8 is exact).
  - grad_norm: each coordinate g_i is a sum of 8 per-pair terms, so |dg_i| <= 2 gamma_7 S_i with
    S = mean_b |g_b| (elementwise), and |d||g||| <= ||dg|| <= 2 gamma_7 ||S|| <= 2 gamma_7 K ||g||,
    where K bounds the pairs' gradient cancellation, mean_b ||g_b|| <= K ||mean_b g_b||. This
    is an assumption, not a derivation: K = 8 (the per-pair gradients' mean keeps at least 1/8
    of their average length).
  Step 3 runs after the first real AdamW step (lr from step 2). Its update u = lr m/sqrt(v) is
  homogeneous of degree 0 in (g1_i, g2_i) with sup(|g1 du/dg1| + |g2 du/dg2|) = c_A = 1.0003 at
  b1 = 0.9, b2 = 0.999 (evaluated on the unit circle); global-norm clipping rescales each g by a
  norm whose relative error is below 2 gamma_7 K as above. A coordinate whose relative gradient
  error is r_i moves by at most lr c_A (r_i1 + r_i2), and the loss moves to first order by
  sum_i |g3_i| |du_i| <= lr c_A 2 (2 gamma_7) sum_i S_i <= lr c_A 4 gamma_7 sqrt(N) K G, with
  N trainable parameters and G the largest grad_norm of steps 1-3 (|g3_i| r_i <= 2 gamma_7 S_i
  when g3 is about g2, which one lr-1e-2 step keeps); the clipping norms' errors add as much
  again. Plus step 3's own reduction term.
  """
  c_adam, k_cancel = 1.0003, float(N_PAIRS)
  big_g = max(one[s]["grad_norm"] for s in (1, 2, 3))
  tol = {s: 2 * GAMMA * one[s]["loss"] for s in (1, 2, 3)}
  tol[3] += 2 * lr * c_adam * 4 * GAMMA * np.sqrt(n_trainable) * k_cancel * big_g
  return tol, 2 * GAMMA * k_cancel


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _random_base(data: str, directory: str) -> str:
  """A base model with random weights everywhere (a fresh one outputs exactly 0, which would
  leave DPO's LoRA gradients at 0 and every loss at log 2)."""
  cfg = model_config(tiny_config("dense_dpo", data)).replace(lora=LoRAConfig())
  inputs = (np.zeros((1, T, H, W, C), np.float32), np.zeros((1,), np.float32),
            np.zeros((1, L, D), np.float32), np.ones((1, L), bool))
  params = nn.unbox(build(cfg).init(jax.random.key(0), *inputs)["params"])
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda x: np.asarray(x) + rng.normal(scale=0.1, size=x.shape).astype(x.dtype), params)
  pretrained.save_params(directory, params, cfg)
  return directory


def _start(body: str, log: str, pid: int | None, port: int, **fields) -> subprocess.Popen:
  """Runs `body` (formatted with `fields`) as process `pid` of 2 with 4 CPU devices, or (pid
  None) as a lone process with 8; its output goes to the file `log` (a pipe could fill up)."""
  devices = 8 if pid is None else 4
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  script = (PROLOGUE + body).format(root=os.getcwd(), port=port, pid=pid, **fields)
  with open(log, "w") as f:
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=f,
                            stderr=subprocess.STDOUT)
  proc.log = log
  return proc


def _train(data: str, base: str, workdir: str, pid: int | None, port: int, steps: int):
  return _start(TRAIN, f"{workdir}.{pid}.log", pid, port, data=data, base=base,
                settings=SETTINGS, workdir=workdir, steps=steps)


def _output(proc: subprocess.Popen, timeout: float = 180) -> str:
  try:
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
  with open(proc.log) as f:
    return f.read()


def _result(out: str):
  return json.loads(out.split("RESULT ")[-1])


def _history(out: str) -> dict[int, dict[str, float]]:
  return {int(k): v for k, v in _result(out).items()}


def _wait_for(path: str, procs: list[subprocess.Popen], timeout: float = 240) -> None:
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    if time.time() > deadline or any(p.poll() is not None for p in procs):
      pytest.fail(f"no {path}: {[_output(p, 0.1)[-3000:] for p in procs]}")
    time.sleep(0.2)


@pytest.mark.e2e
def test_two_processes_match_one_and_stop_together_on_sigterm(tmp_path):
  data = write_pairs(str(tmp_path / "pairs"))
  base = _random_base(data, str(tmp_path / "base"))
  workdir, one_dir = str(tmp_path / "two"), str(tmp_path / "one")
  port = _free_port()
  procs = [_train(data, base, workdir, pid, port, steps=100000) for pid in (0, 1)]
  ref = _train(data, base, one_dir, None, port, steps=4)  # The reference, run alongside.
  _wait_for(os.path.join(workdir, "checkpoints", "3"), procs)
  procs[1].send_signal(signal.SIGTERM)  # One process only: both must stop at the same step.
  outs = [_output(p) for p in procs + [ref]]
  assert [p.returncode for p in procs + [ref]] == [0, 0, 0], [o[-3000:] for o in outs]
  histories = [_history(o) for o in outs]
  stop = max(histories[0])
  assert max(histories[1]) == stop and stop > 3
  for out in outs[:2]:
    assert f"Stopped by a signal at step {stop} of 100000" in out
  step_dir = os.path.join(workdir, "checkpoints", str(stop))
  assert sorted(f for f in os.listdir(os.path.join(step_dir, "iter")) if f.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  steps = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
  assert max(steps) == stop

  # One process x 8 devices: the same global batches (data/pipeline.py's block sharding), the
  # same losses, the same previews (the source's first prompts, whatever share a process reads).
  # The measured gaps go to the console (-s): launch/regenerate_results.sh keeps them in
  # results/logs/multihost.txt.
  one = histories[2]
  gaps = {s: max(abs(h[s]["loss"] - one[s]["loss"]) for h in histories[:2]) for s in (1, 2, 3)}
  _, state = pretrained.read_item(one_dir, "state")
  n_trainable = sum(np.size(x) for x in jax.tree_util.tree_leaves(state["trainable"]))
  loss_tol, grad_rtol = multihost_tolerances(one, tiny_config("dense_dpo", data).optim.lr,
                                             n_trainable)
  print("multihost: 2 processes x 4 devices vs 1 x 8, |loss difference| at steps 1-3: "
        + ", ".join(f"{gaps[s]:.2e} (bound {loss_tol[s]:.2e})" for s in gaps)
        + f"; both stopped at step {stop}")
  for s in (1, 2, 3):
    for h in histories[:2]:
      np.testing.assert_allclose(h[s]["loss"], one[s]["loss"], rtol=0, atol=loss_tol[s])
  for s in (1, 2):
    for h in histories[:2]:
      np.testing.assert_allclose(h[s]["grad_norm"], one[s]["grad_norm"], rtol=grad_rtol)
  # The bounds still see a relative 1e-4 change of a loss where the parameters are equal.
  for s in (1, 2):
    with pytest.raises(AssertionError):
      np.testing.assert_allclose(histories[0][s]["loss"] * (1 + 1e-4), one[s]["loss"], rtol=0,
                                 atol=loss_tol[s])
  losses = [one[s]["loss"] for s in range(1, 5)]
  assert one[1]["grad_norm"] > 0 and max(losses) - min(losses) > 1e-3, losses
  png = [np.asarray(Image.open(os.path.join(d, "samples", "step_0000003.png")), np.int16)
         for d in (workdir, one_dir)]
  assert png[0].shape == png[1].shape == (2 * 8, 4 * 8, 3)
  assert np.abs(png[0] - png[1]).max() <= 1

  # The two-process checkpoint holds one iterator state a process: one process refuses it.
  with pytest.raises(checkpointing.ProcessCountError) as err:
    train.train_and_evaluate(tiny_config("dense_dpo", data, total_steps=stop + 2, init_from=base),
                             workdir)
  assert f"checkpoint {step_dir} was saved by 2 processes; this run has 1" in str(err.value)


@pytest.mark.e2e
def test_two_processes_split_pairs_and_label_them_once(tmp_path):
  data = str(tmp_path / "videos")  # ShapesWorld clips: the segment oracle parses their prompts.
  cfg = tfds_builder.ShapesWorldConfig(name="test")
  arrayrecord_io.write_records([tfds_builder.shapesworld_video(i, "train", cfg) for i in range(5)],
                               data, "videos", num_shards=1)
  ids = [r.id for r in arrayrecord_io.iter_records(data, "videos")]
  out, port = str(tmp_path / "pairs"), _free_port()
  procs = [_start(PAIRS_AND_LABELS, f"{out}.{pid}.log", pid, port, data=data, workdir=out)
           for pid in (0, 1)]
  outs = [_output(p) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]
  # Process 0 wrote parts 0, 2, 4 and process 1 parts 1, 3; process 0 joined them after both
  # had finished, and both return the joined dataset and process 0's label statistics.
  (side, stats, error), (side1, stats1, error1) = (_result(o) for o in outs)
  assert (side, json.dumps(stats)) == (side1, json.dumps(stats1))
  assert side["num_records"] == 5 and len(side["shards"]) == 5
  assert [r.id for r in arrayrecord_io.iter_records(out, "pairs")] == [f"{i}-guided" for i in ids]
  labeled = list(arrayrecord_io.iter_records(out, "pairs_segment"))
  assert [r.id for r in labeled] == [f"{i}-guided" for i in ids]
  assert all(r.segment_labels is not None for r in labeled)
  assert stats["num_pairs"] == 5
  assert sorted(os.listdir(os.path.join(out, "pairs_segment_previews"))) == ["0000.gif", "0001.gif"]
  assert not [f for f in os.listdir(out) if ".tmp" in f]
  # A failure of process 0's single-copy work reaches the others, which would otherwise wait.
  assert (error, error1) == ("ValueError: no labels", "RuntimeError: process 0 failed: "
                                                      "ValueError: no labels")


@pytest.mark.e2e
def test_two_processes_split_evaluation_samples_and_join_them(tmp_path):
  data = str(tmp_path / "videos")
  cfg = tfds_builder.ShapesWorldConfig(name="test")
  arrayrecord_io.write_records([tfds_builder.shapesworld_video(i, "train", cfg) for i in range(5)],
                               data, "videos", num_shards=1)
  port = _free_port()
  procs = [_start(EVALUATE, str(tmp_path / f"eval.{pid}.log"), pid, port, data=data,
                  out=str(tmp_path)) for pid in (0, 1)]
  outs = [_output(p) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]
  # Batches 0 and 2 (3 samples each) on process 0; 1 (3) and 3 (the last sample) on process 1.
  assert [_result(o) for o in outs] == [[3, 3], [3, 1]]
  # The reference: the sampler called once on all 10 samples' keys and prompts.
  from densedpo_jax.objectives import sampling
  params, records, spec, cfg = evaluation_setup(data)
  run = sampling.make_video_sampler(cfg, (16, 16, 16, 3), spec.num_steps, spec.cfg_scale)
  text = np.repeat(np.stack([r.text_emb for r in records]).astype(np.float32), 2, axis=0)
  mask = np.repeat(np.stack([np.asarray(r.text_mask, bool) for r in records]), 2, axis=0)
  want = np.asarray(run(params, jax.random.split(jax.random.key(spec.seed), 10), text, mask))
  assert want.shape == (10, 16, 16, 16, 3) and np.abs(want).max() > 0
  # Batches of 3 and 1 against one of 10 compile other programs: two Euler steps (the DiT's
  # Lipschitz constant in x taken as 1 at this weight scale, and max|v| as max|x|), each through
  # a depth-2 forward whose longest reduction is the timestep embedding's time_freq_dim.
  scale = float(np.abs(want).max())
  tol = spec.num_steps * forward_gap_bound(scale, cfg.depth, cfg.time_freq_dim) + euler_gap_bound(
      spec.num_steps, scale)
  for pid in (0, 1):
    np.testing.assert_allclose(np.load(tmp_path / f"videos{pid}.npy"), want, rtol=0, atol=tol)


def test_join_items_checks_what_this_process_holds():
  items = {i: np.full((2,), i, np.float32) for i in range(3)}
  np.testing.assert_array_equal(distributed.join_items(items, 3, (2,), np.float32),
                                [[0, 0], [1, 1], [2, 2]])
  with pytest.raises(ValueError, match=r"process 0 holds items \[0, 2\]; expected \[0, 1, 2\]"):
    distributed.join_items({0: items[0], 2: items[2]}, 3, (2,), np.float32)


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """`gs://` paths of `etils.epath` redirected to `<tmp>/gcs/`; `os.path.abspath` of a URL fails
  the test (it would make `gs://b/run` into `<cwd>/gs:/b/run`)."""
  root = str(tmp_path / "gcs")
  local = lambda p: os.fspath(p).replace("gs://", root + "/", 1)
  one = lambda fn, p, *a, **k: fn(local(p), *a, **k)
  two = lambda fn, p, dst, *a, **k: fn(local(p), local(dst), *a, **k)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # Else gs:// skips the mock.
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  abspath = os.path.abspath
  monkeypatch.setattr(os.path, "abspath", lambda p: pytest.fail(f"os.path.abspath({p!r})")
                      if "://" in os.fspath(p) else abspath(p))
  with epath_testing.mock_epath(
      open=one, exists=one, glob=one, isdir=one, listdir=one, makedirs=one, mkdir=one,
      remove=one, rmtree=one, stat=one, walk=one, copy=two, rename=two, replace=two):
    yield root


def test_gs_paths_keep_their_scheme(fake_gcs):
  distributed.write_json("gs://bucket/run/eval/metrics.json", {"loss": 0.5})
  assert distributed.read_json("gs://bucket/run/eval/metrics.json") == {"loss": 0.5}
  assert os.listdir(os.path.join(fake_gcs, "bucket", "run", "eval")) == ["metrics.json"]
  previews.save_png("gs://bucket/run/samples/step_0000001.png", np.zeros((4, 8, 3), np.uint8))
  assert os.path.isfile(os.path.join(fake_gcs, "bucket", "run", "samples", "step_0000001.png"))
  checkpointing.check_resumable("gs://bucket/run")  # No checkpoints yet: nothing to refuse.
  ckpt = checkpointing.RunCheckpointer("gs://bucket/run")
  assert str(ckpt.directory) == "gs://bucket/run/checkpoints" and ckpt.latest_step() is None
  ckpt.close()
  assert not os.path.exists("gs:")
