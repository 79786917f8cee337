"""Faults as a user causes them: a NaN with a save in flight, bytes flipped in a real shard, a
truncated shard, SIGTERM to a real training process, a mistyped config key. Each test checks
that nothing already committed is lost and that the error names where the fault is."""
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from orbax.checkpoint._src.path import atomicity

from densedpo_jax.training import train
from densedpo_jax.data import arrayrecord_io, schema, summary
from densedpo_jax.model import pretrained
from tests.helpers import tiny_config, write_pairs, write_videos


def _checkpoint_dirs(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


@pytest.fixture
def slow_saves(monkeypatch):
  """Every Orbax save takes 1.5 s more to commit (its final rename waits), so a save is still in
  flight when the next step fails: deterministic, where a fast disk would hide the race."""
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def slow(self, *args, **kwargs):
    await asyncio.sleep(1.5)
    return await finalize(self, *args, **kwargs)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", slow)


@pytest.mark.e2e
def test_a_nan_with_a_save_in_flight_keeps_that_checkpoint(slow_saves, tmp_path):
  data = write_videos(str(tmp_path / "videos"))
  config = tiny_config("flow_matching", data, total_steps=10, checkpoint_every=1,
                       async_checkpointing=True, **{"optim.lr": 1e30, "mesh.num_devices": 1})
  workdir = str(tmp_path / "run")
  with pytest.raises(train.NonFiniteLossError, match="at step 3"):
    train.train_and_evaluate(config, workdir)
  # Step 2 passed the finite check and was being saved when step 3 failed: it is complete.
  assert _checkpoint_dirs(workdir) == ["1", "2"]
  _, params = pretrained.read_item(workdir, "params")
  leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]
  assert leaves and all(np.isfinite(x).all() for x in leaves)


def _record_offset(path, source, index):
  """Byte offset of record `index` of `source` inside the shard file `path` (uncompressed)."""
  data = open(path, "rb").read()
  offset = data.find(source[index].data)
  assert offset > 0
  return offset


def _corrupt_record(directory, index=5):
  """Overwrites 64 bytes in the middle of record `index` of shard 0 with random bytes."""
  source = arrayrecord_io.ShardedSource(directory, "pairs")
  path = source.files[0]
  offset = _record_offset(path, source, index) + 1000
  with open(path, "r+b") as f:
    f.seek(offset)
    f.write(os.urandom(64))
  return os.path.basename(path)


def test_flipped_bytes_are_located_and_can_be_skipped_and_counted(tmp_path):
  data = write_pairs(str(tmp_path / "pairs"))  # 16 pairs in 2 shards of 8.
  shard = _corrupt_record(data)
  source = arrayrecord_io.ShardedSource(data, "pairs")
  with pytest.raises(schema.RecordError, match=rf"{shard}, record 5, field '<bytes>'.*"
                     r"unreadable.*records 0-7 of 'pairs'.*max_unreadable_share"):
    source[5]
  assert source[4].data and source[6].data  # Its neighbours read.

  # Training stops on it naming the shard, after committing what it had.
  workdir = str(tmp_path / "run")
  config = tiny_config("dense_dpo", data, total_steps=6, checkpoint_every=1,
                       **{"mesh.num_devices": 1})
  with pytest.raises(schema.RecordError, match=rf"{shard}, record 5"):
    train.train_and_evaluate(config, workdir)
  assert all(d.isdigit() for d in _checkpoint_dirs(workdir))  # No half-written step.

  # Skipping within budget: the run finishes and logs the count (1 of 16 = 6%).
  history = train.train_and_evaluate(
      tiny_config("dense_dpo", data, total_steps=6, **{"data.max_unreadable_share": 0.1,
                                                       "mesh.num_devices": 1}),
      str(tmp_path / "skip"))
  assert history[6]["unreadable_records"] == 1
  with pytest.raises(schema.RecordError, match=r"1 unreadable records \(6.2%\) exceed"):
    train.train_and_evaluate(
        tiny_config("dense_dpo", data, total_steps=6, **{"data.max_unreadable_share": 0.05,
                                                         "mesh.num_devices": 1}),
        str(tmp_path / "over"))

  # The dataset summary verifies every record on request and names the bad one.
  assert summary.main([os.path.dirname(data + "/"), "pairs", "--verify"]) == 1
  s = summary.summarize(data, "pairs", verify=True)
  assert [(p["shard"], p["record"]) for p in s["problems"]] == [(shard, 5)]


def test_a_nan_in_a_stored_latent_stops_training_naming_the_record(tmp_path, monkeypatch):
  """A dataset written without the finiteness check (an older writer, another tool): the
  pipeline's validation names the record before any step sees it."""
  good = write_pairs(str(tmp_path / "good"))
  records = list(arrayrecord_io.iter_records(good, "pairs"))
  latent = records[5].latent_a.copy()
  latent[1, 2, 3, 0] = np.nan
  records[5] = dataclasses.replace(records[5], latent_a=latent)
  with monkeypatch.context() as m:
    m.setattr(schema, "validate", lambda rec, *args: rec)
    side = arrayrecord_io.write_records(records, str(tmp_path / "bad"), "pairs", num_shards=2)
  shard = side["shards"][1]["file"]  # Record 5 goes to shard 5 % 2, position 5 // 2.
  config = tiny_config("dense_dpo", str(tmp_path / "bad"), total_steps=6, **{"mesh.num_devices": 1})
  with pytest.raises(schema.RecordError, match=rf"{shard}, record 2, field 'latent_a': holds 1 "
                                               r"non-finite value\(s\) \(NaN or Inf\), the first "
                                               r"at index \(1, 2, 3, 0\)"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_a_truncated_shard_is_named_with_its_record_range(tmp_path):
  data = write_pairs(str(tmp_path / "pairs"))
  source = arrayrecord_io.ShardedSource(data, "pairs")
  path = source.files[1]
  raw = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(raw[:len(raw) // 2])
  with pytest.raises(schema.RecordError, match=rf"{os.path.basename(path)}.*records 8-15"):
    arrayrecord_io.ShardedSource(data, "pairs")
  skipping = arrayrecord_io.ShardedSource(data, "pairs", max_unreadable_share=0.5)
  assert sorted(skipping.unreadable) == list(range(8, 16)) and skipping[3].data
  s = summary.summarize(data, "pairs", verify=True)
  assert len(s["problems"]) == 8


def _events(workdir, tag="loss"):
  """`[(step, value)]` of a scalar across every TensorBoard event file of `workdir`."""
  import tensorflow as tf
  out = []
  for name in sorted(os.listdir(workdir)):
    if name.startswith("events.out"):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
        for value in event.summary.value:
          if value.tag == tag:
            out.append((event.step, float(tf.make_ndarray(value.tensor))))
  return sorted(out)


@pytest.mark.e2e
def test_sigterm_then_resume_logs_every_step_exactly_once(tmp_path):
  data = write_videos(str(tmp_path / "videos"))
  workdir = str(tmp_path / "run")
  total = 60
  script = (
      "import sys, json; sys.path.insert(0, %r)\n"
      "from tests.helpers import tiny_config\n"
      "from densedpo_jax.training import train\n"
      "c = tiny_config('flow_matching', %r, total_steps=%d, log_every=5, checkpoint_every=10)\n"
      "h = train.train_and_evaluate(c, %r)\n"
      "print('HISTORY', json.dumps(h))\n" % (os.getcwd(), data, total, workdir))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(os.path.join(workdir, "checkpoints", "10")):
      time.sleep(1.0)  # Past the first checkpoint, mid-window.
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  history = json.loads(out.split("HISTORY ")[-1])
  stop = max(map(int, history))
  assert "Stopped by a signal at step %d" % stop in out
  assert 10 < stop < total and str(stop) in _checkpoint_dirs(workdir)

  resumed = train.train_and_evaluate(
      tiny_config("flow_matching", data, total_steps=total, log_every=5, checkpoint_every=10),
      workdir)
  assert min(map(int, resumed)) > stop
  logged = {**history, **resumed}
  # Windows partition the steps: every step is in exactly one logged window, none twice.
  assert sum(h["window_steps"] for h in logged.values()) == total
  steps = [s for s, _ in _events(workdir)]
  assert steps == sorted(int(s) for s in logged) and len(steps) == len(set(steps))
  assert stop in steps


def test_an_unknown_config_key_is_one_line_naming_the_closest_key():
  result = subprocess.run([sys.executable, "-m", "densedpo_jax.main", "--config=configs/dense.py",
                           "--config.optim.lrr=1e-4"], capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert lines == ["error: unknown config key 'optim.lrr' for --config=configs/dense.py; "
                   "did you mean 'optim.lr'?"]


TINY_RUN = """import os
from tests.helpers import tiny_config


def get_config():
  return tiny_config("dense_dpo", os.environ["PAIRS"], total_steps=4, checkpoint_every=2,
                     **{"mesh.num_devices": 1, "model.width": 128})
"""
FILE_LIMIT = ("import resource, runpy, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, as a full disk's ENOSPC\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, resource.RLIM_INFINITY))\n"
              "sys.argv = ['densedpo_jax.main'] + sys.argv[1:]\n"
              "runpy.run_module('densedpo_jax.main', run_name='__main__', alter_sys=True)\n")


@pytest.mark.e2e
def test_a_checkpoint_that_cannot_be_written_ends_the_run_with_one_line(tmp_path):
  """The kernel refuses files past 400 kB (RLIMIT_FSIZE; the parameter file of this width-128
  model is larger, the log file smaller): the job ends with one line saying what, where and how
  much space is left, the library tracebacks in the log file."""
  (tmp_path / "tiny.py").write_text(TINY_RUN)
  workdir = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, "-c", FILE_LIMIT, f"--config={tmp_path / 'tiny.py'}", f"--workdir={workdir}"],
      capture_output=True, text=True, timeout=600, cwd=os.getcwd(),
      env=dict(os.environ, JAX_PLATFORMS="cpu", PAIRS=write_pairs(str(tmp_path / "pairs"))))
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 1, out.stderr[-3000:]
  assert lines[-1].startswith(f"error: writing a checkpoint to {workdir}/checkpoints failed at "
                              "step 2: a file passed the size limit (EFBIG); "), lines[-1]
  assert " GiB free of " in lines[-1] and f"(details: {workdir}/logs/log.txt)" in lines[-1]
  assert "Traceback" not in out.stderr and len(lines) < 25, out.stderr[-3000:]
  log = (workdir / "logs" / "log.txt").read_text()
  assert "Traceback" in log and "File too large" in log
  assert not any(d.isdigit() for d in _checkpoint_dirs(str(workdir)))  # Nothing looks complete.


def test_a_text_write_that_fails_keeps_the_old_file_and_leaves_no_temporary(tmp_path,
                                                                             monkeypatch):
  """A full disk mid-write (ENOSPC from the sync) must leave the previous sidecar readable and
  whole, and no hidden temporary beside it."""
  import errno
  from densedpo_jax import distributed
  target = tmp_path / "pairs.json"
  distributed.write_text(target, '{"records": 3}')

  def full_disk(fd):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "fsync", full_disk)
  with pytest.raises(OSError, match="No space left"):
    distributed.write_text(target, '{"records": 300}')
  assert json.loads(target.read_text()) == {"records": 3}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.json"]
