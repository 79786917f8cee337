"""Every shell command shown in README.md, docs/*.md and the projects' READMEs runs as written.

Commands come from fenced ```bash blocks and indented blocks (a backslash joins lines; `#` lines
are comments). Each is checked as far as a CPU machine without the user's data allows:
  - `python -m densedpo_jax.main` / the project's main: the config file and ARG load, and every
    `--config.KEY` exists (the check main itself runs before any job);
  - every other `python -m TOOL`: `TOOL --help` runs and names every flag the command uses;
  - `bash SCRIPT` / `launch/*.sh`: the script runs with `--dry-run` and prints its commands;
  - a few short, self-contained commands run whole (the e2e tier).
A command this cannot check (an external server, an install) is skipped with its reason.
"""
import functools
import os
import re
import shlex
import subprocess
import sys

import pytest

from densedpo_jax import main as library_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = (["README.md"]
        + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                 if f.endswith(".md"))
        + ["benchmarks/README.md", "projects/shapesworld_paper/README.md"])
SHELL_PROGRAMS = ("python", "bash", "pip", "vllm", "export", "sbatch")
# Commands the checks below cannot reach, and why (matched on the command's start).
SKIP = {
    "pip ": "an install (the README's commands are what CI runs)",
    "export ": "sets an environment variable",
    "vllm ": "an external server on a GPU",
}
# Short commands that run whole (e2e): (command, seconds it may take).
RUN_WHOLE = {
    "python -m densedpo_jax.plan --config=configs/dense.py:wan1.3b --devices=8 --device_memory=80G",
}


def _blocks(text):
  """Code blocks of a Markdown text: fenced ones (bash/sh/none) and indented ones."""
  blocks = [m.group(1) for m in re.finditer(r"```(?:bash|sh)?\n(.*?)```", text, re.S)]
  indented, current = [], []
  for line in re.sub(r"```.*?```", "", text, flags=re.S).splitlines():
    if line.startswith("    "):
      current.append(line[4:])
    elif current and not line.strip():
      current.append("")
    else:
      if current:
        indented.append("\n".join(current))
      current = []
  if current:
    indented.append("\n".join(current))
  return blocks + indented


def _commands(block):
  """Shell commands of a block: continuation lines joined, comments dropped."""
  out, pending = [], ""
  for line in block.splitlines():
    stripped = line.strip()
    if not pending and (not stripped or stripped.startswith("#")):
      continue
    if stripped.endswith("\\"):
      pending += stripped[:-1].rstrip() + " "
      continue
    command = (pending + stripped).split("  #")[0].strip()
    pending = ""
    first = command.split()[0] if command else ""
    if first in SHELL_PROGRAMS or (first.startswith("launch/") and first.endswith(".sh")):
      out.append(command)
  return out


def _all_commands():
  found = []
  for doc in DOCS:
    with open(os.path.join(ROOT, doc)) as f:
      text = f.read()
    for block in _blocks(text):
      for command in _commands(block):
        for part in command.split(" && "):
          found.append((doc, part.strip()))
  return found


COMMANDS = _all_commands()
IDS = [f"{doc}:{command[:60]}" for doc, command in COMMANDS]


def _argv(command):
  env = {"WAN": "/path/to/Wan2.1-T2V-1.3B-Diffusers"}
  return shlex.split(re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), command))


def test_the_docs_show_commands():
  assert len(COMMANDS) >= 20
  assert {doc for doc, _ in COMMANDS} >= {"README.md", "docs/videos.md", "docs/labeling.md"}


def test_the_extraction_joins_continuations_and_drops_comments():
  block = ("# a comment\npython -m x --a=1 \\\n    --b=2\n\nbash s.sh --c  # trailing\nls\n"
           "pipeline.py, plan.py\n")
  assert _commands(block) == ["python -m x --a=1 --b=2", "bash s.sh --c"]
  text = "text\n\n    python -m y\n    # c\n\n```bash\npip install z\n```\n"
  assert sorted(c for b in _blocks(text) for c in _commands(b)) == ["pip install z", "python -m y"]


@pytest.mark.parametrize("doc,command", [c for c in COMMANDS if "densedpo_jax.main" in c[1]
                                         or "projects.shapesworld_paper.main" in c[1]],
                         ids=[i for i, c in zip(IDS, COMMANDS) if "densedpo_jax.main" in c[1]
                              or "projects.shapesworld_paper.main" in c[1]])
def test_every_config_and_key_of_a_job_command_exists(doc, command):
  argv = _argv(command)[3:]
  spec = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
  library_main._load_config(spec)  # The file loads and takes the ARG.
  error = library_main.check_config_overrides(argv)
  assert error is None, f"{doc}: {command}\n{error}"


@functools.lru_cache(maxsize=None)
def _help(module):
  out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return out.returncode, out.stdout + out.stderr


def _tool_commands():
  return [(doc, c) for doc, c in COMMANDS if c.startswith("python -m ")
          and not re.match(r"python -m (densedpo_jax|projects\.shapesworld_paper)\.main\b", c)]


@pytest.mark.e2e
@pytest.mark.parametrize("doc,command", _tool_commands(), ids=[f"{d}:{c[:60]}"
                                                                 for d, c in _tool_commands()])
def test_every_tool_takes_the_flags_the_docs_give_it(doc, command):
  argv = _argv(command)
  if command in RUN_WHOLE:
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, f"{doc}: {command}\n{out.stderr[-2000:]}"
    return
  code, text = _help(argv[2])
  assert code == 0, f"{doc}: {argv[2]} --help failed:\n{text[-2000:]}"
  if any(a.startswith("--config=") for a in argv):  # A tool over a job config (plan).
    error = library_main.check_config_overrides(argv[3:])
    assert error is None, f"{doc}: {command}\n{error}"
  for flag in (a.split("=", 1)[0] for a in argv[3:]
               if a.startswith("--") and not a.startswith("--config.")):
    assert re.search(rf"{re.escape(flag)}\b", text), (
        f"{doc}: {command}: {flag} is not a flag of {argv[2]}")


def _script_commands():
  return [(doc, c) for doc, c in COMMANDS if c.startswith(("bash ", "launch/"))]


def _a_finished_pretraining_run(folder):
  (folder / "workdirs" / "pretrain" / "checkpoints" / "3782" / "params").mkdir(parents=True)


# Scripts that read an earlier command's output: what that output looks like, made in a
# scratch folder the script then runs in.
NEEDS = {"launch/ship_base.sh workdirs/pretrain": _a_finished_pretraining_run}


@pytest.mark.parametrize("doc,command", _script_commands(),
                         ids=[f"{d}:{c[:60]}" for d, c in _script_commands()])
def test_every_script_prints_its_commands_with_dry_run(doc, command, tmp_path):
  argv = _argv(command)
  script = os.path.join(ROOT, argv[1] if argv[0] == "bash" else argv[0])
  args = argv[2:] if argv[0] == "bash" else argv[1:]
  cwd = ROOT
  for start, make in NEEDS.items():
    if command.startswith(start):
      make(tmp_path)
      cwd = tmp_path
  out = subprocess.run(["bash", script, "--dry-run", *args], cwd=cwd, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, WORKDIR=str(tmp_path / "w")))
  assert out.returncode == 0, f"{doc}: {command}\n{out.stderr}"
  assert out.stdout.strip(), f"{doc}: {command} printed no command"


@pytest.mark.parametrize("doc,command", [c for c in COMMANDS if c[1].startswith(tuple(SKIP))],
                         ids=[i for i, c in zip(IDS, COMMANDS) if c[1].startswith(tuple(SKIP))])
def test_commands_outside_these_checks_are_named(doc, command):
  reason = next(r for start, r in SKIP.items() if command.startswith(start))
  pytest.skip(f"{doc}: {command[:60]}: {reason}")


def test_every_command_is_checked_or_skipped_with_a_reason():
  kinds = [c for _, c in COMMANDS if not (
      c.startswith(tuple(SKIP)) or c.startswith(("python -m ", "bash ", "launch/")))]
  assert not kinds, f"commands no check covers: {kinds}"
