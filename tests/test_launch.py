"""launch/*.sh and the ShapesWorld project's scripts, --dry-run: each script prints the commands
it would run (one a line, quoted for the shell) and runs none of them; without --dry-run it runs
exactly those commands."""
import os
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
CONFIG = "--config=configs/dense.py:paper"


@pytest.fixture
def fake_bin(tmp_path):
  """`python`, `gcloud` and `srun` on PATH that only record their arguments in `calls.txt`."""
  bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
  bin_dir.mkdir()
  for name in ("python", "gcloud", "srun"):
    script = bin_dir / name
    script.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> {calls}\n')
    script.chmod(0o755)
  return bin_dir, calls


def _launch(name, *args, fake_bin, **env):
  bin_dir, calls = fake_bin
  result = subprocess.run(
      ["bash", os.path.join(LAUNCH, name), *args], capture_output=True, text=True, timeout=60,
      env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", **env))
  assert result.returncode == 0, result.stderr
  ran = calls.read_text().splitlines() if calls.exists() else []
  return [shlex.split(line) for line in result.stdout.splitlines()], ran


def test_local_multiprocess_prints_one_command_a_process_and_runs_them(fake_bin):
  lines, ran = _launch("local_multiprocess.sh", "3", "4", "--dry-run", CONFIG, "--workdir=/w",
                       fake_bin=fake_bin, PORT="23456")
  assert ran == []
  assert len(lines) == 3
  for i, cmd in enumerate(lines):
    assert cmd[:3] == ["env", "JAX_PLATFORMS=cpu",
                       "XLA_FLAGS=--xla_force_host_platform_device_count=4"]
    assert cmd[3:] == ["python", "-m", "densedpo_jax.main", "--distributed",
                       "--coordinator_address=127.0.0.1:23456", "--num_processes=3",
                       f"--process_id={i}", CONFIG, "--workdir=/w"]
  # Without --dry-run the same commands run (here: the fake python records them).
  _, ran = _launch("local_multiprocess.sh", "3", "4", CONFIG, "--workdir=/w", fake_bin=fake_bin,
                   PORT="23456")
  assert sorted(ran) == sorted(" ".join(cmd[3:]) for cmd in lines)


def test_tpu_pod_prints_the_gcloud_command_with_the_flags_intact(fake_bin):
  lines, ran = _launch("tpu_pod.sh", "--dry-run", CONFIG, "--workdir=gs://bucket/run",
                       "--config.experiment.arms=dense, sft", fake_bin=fake_bin, TPU="pod",
                       ZONE="us-east5-a")
  assert ran == [] and len(lines) == 1
  cmd = lines[0]
  assert cmd[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=us-east5-a",
                     "--worker=all"]
  assert cmd[8] == "--command"
  remote = shlex.split(cmd[9])  # What every worker runs.
  python = remote[remote.index("python"):]
  assert python == ["python", "-m", "densedpo_jax.main", "--distributed", CONFIG,
                    "--workdir=gs://bucket/run", "--config.experiment.arms=dense, sft"]


def test_gpu_slurm_prints_one_srun_of_every_node(fake_bin):
  lines, ran = _launch("gpu_slurm.sh", "--dry-run", CONFIG, "--workdir=/shared/run",
                       fake_bin=fake_bin)
  assert ran == [] and len(lines) == 1
  cmd = lines[0]
  assert cmd[:4] == ["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "srun", "--ntasks-per-node=1"]
  # The user's --config comes before any --config.x override (absl refuses the other order).
  assert cmd[4:] == ["python", "-m", "densedpo_jax.main", "--distributed", CONFIG,
                     "--workdir=/shared/run"]


def test_shapesworld_scripts_print_their_jobs_and_write_nothing(fake_bin, tmp_path):
  workdir = tmp_path / "experiment"
  project = "projects/shapesworld_paper"
  lines, ran = _launch(os.path.join(ROOT, project, "reproduce.sh"), "--dry-run", "--config.seed=1",
                       fake_bin=fake_bin, WORKDIR=str(workdir))
  assert ran == [] and not workdir.exists()
  assert lines == [["python", "-m", "projects.shapesworld_paper.main",
                    f"--config={project}/configs/experiment.py", f"--workdir={workdir}",
                    "--config.seed=1"]]

  lines, ran = _launch(os.path.join(ROOT, project, "regenerate_results.sh"), "--dry-run",
                       fake_bin=fake_bin, WORKDIR=str(workdir), STAGES="1 4 6")
  assert ran == [] and not workdir.exists()
  assert lines == [
      ["mkdir", "-p", str(workdir), f"{project}/results/logs", "results/logs"],
      ["python", "-m", "projects.shapesworld_paper.main",
       f"--config={project}/configs/experiment.py:shapesworld", f"--workdir={workdir}"],
      ["python", "-m", "projects.shapesworld_paper.main",
       f"--config={project}/configs/experiment.py:motion", f"--workdir={workdir}"],
      ["python", "-m", "projects.shapesworld_paper.motion_analysis", f"--workdir={workdir}",
       f"--out={project}/results/motion_analysis"],
      ["python", "-m", "projects.shapesworld_paper.main",
       f"--config={project}/configs/experiment.py:objective", f"--workdir={workdir}"],
      ["python", "-m", "projects.shapesworld_paper.segment_speed", f"--workdir={workdir}",
       "--arms=dense,dense:pos=1", f"--out={project}/results/segment_speed"],
      ["python", "-m", "projects.shapesworld_paper.tables", "--readme=README.md",
       f"--readme={project}/README.md"]]

  run = tmp_path / "run"
  (run / "checkpoints" / "7" / "params").mkdir(parents=True)
  (run / "checkpoints" / "12" / "params").mkdir(parents=True)
  lines, _ = _launch("ship_base.sh", "--dry-run", str(run), str(tmp_path / "base"),
                     fake_bin=fake_bin)
  assert not (tmp_path / "base").exists() and not (tmp_path / "base.tmp").exists()
  assert lines[2] == ["cp", "-r", f"{run}/checkpoints/12/params",
                      f"{run}/checkpoints/12/_CHECKPOINT_METADATA", f"{tmp_path}/base.tmp/12/"]
  assert [cmd[0] for cmd in lines] == ["rm", "mkdir", "cp", "rm", "mv"]


def test_every_launch_script_takes_dry_run():
  scripts = sorted(f for f in os.listdir(LAUNCH) if f.endswith(".sh") and not f.startswith("_"))
  assert scripts == ["gpu_slurm.sh", "local_multiprocess.sh", "ship_base.sh", "tpu_pod.sh"]
  project = os.path.join(ROOT, "projects", "shapesworld_paper")
  for name in [os.path.join(LAUNCH, s) for s in scripts] + [
      os.path.join(project, "reproduce.sh"), os.path.join(project, "regenerate_results.sh")]:
    with open(name) as f:
      text = f.read()
    assert "parse_dry_run" in text and "--dry-run" in text.split("set -euo")[0], name
