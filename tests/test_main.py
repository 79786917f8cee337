"""The entry point: config overrides reach the job, unknown keys and bad args are errors."""
import os
import subprocess
import sys

import pytest

from densedpo_jax import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "densedpo_jax.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_override_reaches_the_job(tmp_path):
  out = _run("--config=configs/dense.py", "--config.task=bogus", "--config.dpo.beta=123.0",
             f"--workdir={tmp_path}")
  assert out.returncode != 0
  assert "config.task='bogus'" in out.stderr  # The override was applied before dispatch.
  # The logged config carries the overridden value; it goes to the log file, not the console.
  assert "beta: 123.0" in (tmp_path / "logs" / "log.txt").read_text()
  assert "beta: 123.0" not in out.stderr
  loud = _run("--config=configs/dense.py", "--config.task=bogus", "--config.dpo.beta=123.0",
              f"--workdir={tmp_path}", "--verbosity=1")
  assert "beta: 123.0" in loud.stderr  # --verbosity=1 brings everything back to the console.


def test_default_workdir_is_named_on_the_console():
  out = _run("--config=configs/dense.py", "--config.task=bogus")
  assert "workdir workdirs/dense," in out.stderr  # Default workdir from the config name.


def test_unknown_key_is_an_error_naming_it():
  out = _run("--config=configs/pretrain.py:quick", "--config.dpo.betta=1.0")
  assert out.returncode != 0 and "betta" in out.stderr


def test_unknown_config_arg_is_an_error():
  from configs import dense, pretrain
  with pytest.raises(ValueError, match="unknown"):
    pretrain.get_config("huge")
  with pytest.raises(ValueError, match="unknown"):
    dense.get_config("huge")
  assert dense.get_config("paper").lora.rank == 128
  assert dense.get_config("paper").data.batch_size == 256


def test_default_workdir_follows_the_config_name():
  assert main.default_workdir("configs/dense.py") == os.path.join("workdirs", "dense")
  assert main.default_workdir("configs/pretrain.py:quick") == os.path.join("workdirs", "pretrain_quick")


def test_pairs_task_needs_a_model():
  out = _run("--config=configs/pairs.py", "--config.init_from=")
  assert out.returncode != 0 and "config.init_from is empty" in out.stderr


@pytest.mark.parametrize("tool,required", [("convert", "family"), ("decode", "--records"),
                                           ("encode", "--weights"), ("export", "--workdir")])
def test_each_tool_alias_runs_its_interop_main(tool, required, capsys):
  """`python -m densedpo_jax.TOOL` is the interop tool's own `main`: without its arguments it
  stops with argparse's usage naming the missing one."""
  import importlib
  pytest.importorskip("torch")
  alias = importlib.import_module(f"densedpo_jax.{tool}")
  assert alias.main is importlib.import_module(f"densedpo_jax.interop.{tool}").main
  with pytest.raises(SystemExit) as stop:
    alias.main([])
  assert stop.value.code == 2 and required in capsys.readouterr().err


def test_the_model_tool_lists_every_preset(monkeypatch, capsys):
  from densedpo_jax.model import FAMILIES
  from densedpo_jax.model import __main__ as model_tool
  monkeypatch.setattr(sys, "argv", ["densedpo_jax.model", "--lora_rank=4"])
  model_tool.main()
  out = capsys.readouterr().out
  assert all(preset in out for _, presets in FAMILIES.values() for preset in presets)
