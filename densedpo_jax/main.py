"""Entry point: `python -m densedpo_jax.main --config=configs/<job>.py[:arg] [--workdir=DIR] [--config.key=value]`.

`config.task` selects the job. Configs are locked: overriding a key that does not exist is an
error naming the key. Run from the repository root (config files import `configs.common`).
"""
import difflib
import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from densedpo_jax import console
from densedpo_jax.training import host_memory

_CONFIG = config_flags.DEFINE_config_file("config", None, "Job config file (with optional :arg).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, TensorBoard). "
                               "Default: workdirs/<config name>[_<arg>].")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first "
                                 "(also when DENSEDPO_DISTRIBUTED=1): multi-host TPU pods, multi-node GPU.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0; None: "
                                   "detected on TPU pods, SLURM and other known clusters.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (with "
                                      "--coordinator_address); None: detected.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index; None: detected.")
TASKS = ("train", "pairs", "label", "evaluate", "pipeline")
# Tasks of the research projects beside the library, which has no import of them.
MOVED = {"experiment": "python -m projects.shapesworld_paper.main "
                       "--config=projects/shapesworld_paper/configs/experiment.py[:ARG]"}


def default_workdir(config_path: str) -> str:
  path, _, arg = config_path.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdirs", f"{name}_{arg}" if arg else name)


def setup(argv) -> tuple:
  """(config, workdir) of the parsed flags, with the console, the log file in the workdir and,
  when asked, jax.distributed set up: what every entry point does before its task."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  verbosity = flags.FLAGS.verbosity  # Read once: absl's set_verbosity (in setup) rewrites it.
  console.setup(None, verbosity)  # The log file once the process index is known.
  host_memory.retain_freed_memory()  # Before JAX starts its threads.
  import jax  # After flag parsing; jax.distributed must come before any other JAX call.
  from densedpo_jax import distributed
  if _DISTRIBUTED.value or os.environ.get("DENSEDPO_DISTRIBUTED") == "1":
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(config_flags.get_config_filename(flags.FLAGS["config"]))
  name = "log.txt" if jax.process_count() == 1 else f"log-process{jax.process_index()}.txt"
  console.setup(os.path.join(workdir, "logs", name), verbosity)
  logging.info("JAX %s, process %d of %d, %d devices (%s); workdir %s, full log in %s",
               jax.__version__, jax.process_index(), jax.process_count(), jax.device_count(),
               jax.devices()[0].platform, workdir, os.path.join(workdir, "logs", name))
  logging.info("Config:\n%s", config, extra={console.FILE_ONLY: True})
  logging.info(host_memory.describe(), extra={console.FILE_ONLY: True})
  return config, workdir


def main(argv):
  task = _CONFIG.value.get("task")
  if task in MOVED:
    raise SystemExit(f"error: task={task} is not a task of densedpo_jax.main; run {MOVED[task]}")
  config, workdir = setup(argv)
  if config.task not in TASKS:
    raise ValueError(f"config.task={config.task!r}; expected one of {TASKS}")
  try:
    with console.background_tracebacks_to_log():
      run_task(config, workdir)
  except console.JobError as e:  # Its message is complete: one line, the traceback in the log.
    logging.info("The job stopped on:", exc_info=True, extra={console.FILE_ONLY: True})
    if console.log_file():
      print(f"error: {e} (details: {console.log_file()})", file=sys.stderr, flush=True)
    else:  # No local log file (a gs:// workdir): the details go to the console.
      logging.error("The job stopped on:", exc_info=True)
      print(f"error: {e}", file=sys.stderr, flush=True)
    console.flush()
    if e.hard_exit:
      os._exit(1)
    sys.exit(1)


def run_task(config, workdir) -> None:
  """Runs `config.task` (one of `TASKS`)."""
  if config.task == "train":
    from densedpo_jax.training import train
    history = train.train_and_evaluate(config, workdir)
    if history:
      step = max(history)
      print(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(history[step].items())))
  elif config.task == "pairs":
    from densedpo_jax.tasks import pairs
    pairs.main(config)
  elif config.task == "evaluate":
    from densedpo_jax.tasks import evaluate
    evaluate.main(config, workdir)
  elif config.task == "pipeline":
    from densedpo_jax.tasks import arm
    arm.main(config, workdir)
  elif config.task == "label":
    from densedpo_jax.labeling import task
    task.main(config)


def _load_config(spec: str):
  """The ConfigDict of `path[:arg]`, loaded as config_flags does (for checking overrides)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_config_to_check", path)
  if module_spec is None or not os.path.isfile(path):
    raise SystemExit(f"error: --config={spec}: no config file {path!r}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def check_config_overrides(argv: list[str]) -> str | None:
  """The one-line error for the first `--config.x=y` whose key the config lacks, else None:
  it names the key and the closest valid one (absl would print a long traceback)."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv[:-1]:
    spec = argv[argv.index("--config") + 1]
  keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if spec is None or not keys:
    return None
  config = _load_config(spec)
  for key in keys:
    node, parts = config, key.split(".")
    for depth, part in enumerate(parts):
      children = list(node.keys()) if hasattr(node, "keys") else []
      if part not in children:
        prefix = ".".join(parts[:depth])
        close = difflib.get_close_matches(part, children, n=1, cutoff=0.5)
        hint = (f"; did you mean {'.'.join(filter(None, [prefix, close[0]]))!r}?" if close else
                f"; valid keys{' under ' + repr(prefix) if prefix else ''}: {sorted(children)}"
                if children else f"; {prefix!r} is a value, not a group")
        return f"error: unknown config key {key!r} for --config={spec}{hint}"
      node = node[part]
  return None


def run(main_fn) -> None:
  """Parses the flags and runs `main_fn(argv)`; an unknown `--config.x` key stops first, with
  one line naming it."""
  error = check_config_overrides(sys.argv[1:])
  if error:
    print(error, file=sys.stderr)
    sys.exit(2)
  flags.mark_flags_as_required(["config"])
  app.run(main_fn)


if __name__ == "__main__":
  run(main)
