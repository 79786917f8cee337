"""Entry point: `python -m densedpo_jax.main --config=configs/<job>.py[:arg] [--workdir=DIR] [--config.key=value]`.

`config.task` selects the job. Configs are locked: overriding a key that does not exist is an
error naming the key. Run from the repository root (config files import `configs.common`).
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

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
TASKS = ("train", "pairs", "label", "evaluate", "pipeline", "experiment")


def default_workdir(config_path: str) -> str:
  path, _, arg = config_path.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdirs", f"{name}_{arg}" if arg else name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax  # After flag parsing; jax.distributed must come before any other JAX call.
  if _DISTRIBUTED.value or os.environ.get("DENSEDPO_DISTRIBUTED") == "1":
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(config_flags.get_config_filename(flags.FLAGS["config"]))
  logging.info("JAX %s, process %d of %d, %d devices (%s)", jax.__version__, jax.process_index(),
               jax.process_count(), jax.device_count(), jax.devices()[0].platform)
  logging.info("Workdir %s; config:\n%s", workdir, config)
  if config.task not in TASKS:
    raise ValueError(f"config.task={config.task!r}; expected one of {TASKS}")
  if config.task == "train":
    from densedpo_jax import train
    history = train.train_and_evaluate(config, workdir)
    if history:
      step = max(history)
      print(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(history[step].items())))
  elif config.task == "pairs":
    from densedpo_jax import pairs
    pairs.main(config)
  elif config.task == "evaluate":
    from densedpo_jax import evaluate
    evaluate.main(config, workdir)
  elif config.task == "pipeline":
    from densedpo_jax import pipeline
    pipeline.main(config, workdir)
  elif config.task == "experiment":
    from densedpo_jax import experiment
    experiment.main(config, workdir)
  elif config.task == "label":
    from densedpo_jax.labeling import task
    task.main(config)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
