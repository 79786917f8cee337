"""Entry point of the ShapesWorld reproduction (run from the repository root):

    python -m projects.shapesworld_paper.main \
        --config=projects/shapesworld_paper/configs/experiment.py[:ARG] \
        [--workdir=workdirs/experiment] [--config.key=value]

The flags are densedpo_jax.main's (--workdir, --distributed, ...): the same console, log file
and multi-process setup, then experiment.main instead of a product task.
"""
from densedpo_jax import main as library_main
from projects.shapesworld_paper import experiment


def main(argv):
  config, workdir = library_main.setup(argv)
  if config.get("task") != "experiment":
    raise SystemExit(f"error: config.task={config.get('task')!r}; this entry point runs "
                     "projects/shapesworld_paper/configs/experiment.py (task 'experiment'); "
                     "product tasks run with python -m densedpo_jax.main")
  experiment.main(config, workdir)


if __name__ == "__main__":
  library_main.run(main)
