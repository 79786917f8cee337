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


def test_the_experiment_task_names_the_project_entry_point(tmp_path):
  out = _run("--config=projects/shapesworld_paper/configs/experiment.py:mini",
             f"--workdir={tmp_path / 'w'}")
  assert out.returncode != 0
  last = out.stderr.strip().splitlines()[-1]
  assert last == ("error: task=experiment is not a task of densedpo_jax.main; run python -m "
                  "projects.shapesworld_paper.main "
                  "--config=projects/shapesworld_paper/configs/experiment.py[:ARG]")
  assert not (tmp_path / "w").exists()  # Stopped before the job made its workdir.


def test_the_project_entry_point_refuses_a_product_config(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "projects.shapesworld_paper.main",
                        "--config=configs/dense.py", f"--workdir={tmp_path}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert "config.task='pipeline'" in out.stderr and "densedpo_jax.main" in out.stderr


def test_pairs_task_needs_a_model():
  out = _run("--config=configs/pairs.py", "--config.init_from=")
  assert out.returncode != 0 and "config.init_from is empty" in out.stderr


@pytest.mark.parametrize("tool,module,required", [
    ("convert", "convert_wan", "family"), ("decode", "decode_records", "--records"),
    ("encode", "encode_videos", "--weights"), ("export", "export_diffusers", "--workdir")])
def test_each_tool_alias_runs_its_interop_main(tool, module, required, capsys):
  """`python -m densedpo_jax.TOOL` is the interop tool's own `main`: without its arguments it
  stops with argparse's usage naming the missing one."""
  import importlib
  pytest.importorskip("torch")
  alias = importlib.import_module(f"densedpo_jax.{tool}")
  assert alias.main is importlib.import_module(f"densedpo_jax.interop.{module}").main
  with pytest.raises(SystemExit) as stop:
    alias.main([])
  assert stop.value.code == 2 and required in capsys.readouterr().err


HIDE_EXTRA = ("import sys, runpy\n"
              "for m in ('torch', 'diffusers', 'transformers', 'safetensors', 'peft', 'av'):\n"
              "  sys.modules[m] = None  # As if the [interop] extra were not installed.\n"
              "sys.argv = sys.argv[1:]\n"
              "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n")


@pytest.mark.e2e
@pytest.mark.parametrize("tool,args", [
    ("encode", ["--help"]), ("decode", ["--help"]),
    ("export", ["--workdir=run", "--format=diffusers-lora", "--out=a.safetensors"]),
    ("convert", ["wan", "src", "dst"])])
def test_a_tool_without_its_extra_says_what_to_install_in_one_line(tool, args):
  out = subprocess.run([sys.executable, "-c", HIDE_EXTRA, f"densedpo_jax.{tool}", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 1 and len(lines) == 1, out.stderr[-2000:]
  assert lines[0].startswith(f"python -m densedpo_jax.{tool} needs the [interop] extra (module ")
  assert "pip install" in lines[0] and "Traceback" not in out.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("module", ["convert_wan", "decode_records", "encode_videos",
                                    "export_diffusers"])
def test_each_interop_module_runs_as_a_command_too(module):
  """`python -m densedpo_jax.interop.MODULE` is the same command, never a silent exit 0."""
  pytest.importorskip("torch")
  out = subprocess.run([sys.executable, "-m", f"densedpo_jax.interop.{module}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 2 and "usage:" in out.stderr and "required" in out.stderr


def _model_tool_output(monkeypatch, capsys, families=None):
  from densedpo_jax.model import __main__ as model_tool
  if families is not None:
    monkeypatch.setattr(model_tool, "FAMILIES", families)
  monkeypatch.setattr(sys, "argv", ["densedpo_jax.model", "--lora_rank=4"])
  model_tool.main()
  return capsys.readouterr().out


def test_the_model_tool_prints_a_row_a_preset(monkeypatch, capsys):
  from densedpo_jax.model import FAMILIES
  # The smallest preset of each family (the 14B ones take a minute to trace).
  small = {family: (module, {"tiny" if "tiny" in presets else "wan2.1-t2v-1.3b":
                             presets["tiny" if "tiny" in presets else "wan2.1-t2v-1.3b"]})
           for family, (module, presets) in FAMILIES.items()}
  out = _model_tool_output(monkeypatch, capsys, small)
  rows = out.splitlines()[1:]
  assert len(rows) == len(small)
  for row, (family, (_, presets)) in zip(rows, small.items()):
    [(name, cfg)] = presets.items()
    assert row.split()[:4] == [family, name, str(cfg.width), str(cfg.depth)]


@pytest.mark.e2e
def test_the_model_tool_lists_every_preset(monkeypatch, capsys):
  from densedpo_jax.model import FAMILIES
  out = _model_tool_output(monkeypatch, capsys)
  assert all(preset in out for _, presets in FAMILIES.values() for preset in presets)


def test_the_wan_recipes_bundle_everything_but_paths():
  from configs import evaluate, pairs
  for c in (pairs.get_config("wan1.3b"), evaluate.get_config("wan14b")):
    assert (c.model.family, c.model.dtype, c.model.scan_layers) == ("wan", "bfloat16", True)
    assert (c.data.kind, c.decoder.kind, c.decoder.weights) == ("videos", "wan", "")
  assert pairs.get_config("wan1.3b").pairs.frames_per_segment == 16  # 1 s at 16 fps.
  assert evaluate.get_config("wan14b").model.param_dtype == "bfloat16"
  with pytest.raises(ValueError, match="expected 'guided', 'vanilla' or a model of"):
    pairs.get_config("wan2.2")
  with pytest.raises(ValueError, match="expected none or a model of"):
    evaluate.get_config("paper")
