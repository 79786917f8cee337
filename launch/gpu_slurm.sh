#!/usr/bin/env bash
# Multi-node GPU under SLURM: one process per node, each driving all of its node's GPUs.
# jax.distributed.initialize() reads the SLURM environment (coordinator, process count and id).
# The config sets the compute dtype and attention (:paper and :wan* are bf16 + cuDNN); overrides
# go after --config (absl refuses a --config.x before --config).
# --dry-run prints the srun command instead of running it.
#
#   sbatch --nodes=8 --gpus-per-node=8 launch/gpu_slurm.sh [--dry-run] --config=configs/dense.py:paper --workdir=/shared/run
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
common="$(dirname "$0")/_common.sh"  # Under sbatch $0 is a copy in SLURM's spool folder.
[[ -f "${common}" ]] || common="${SLURM_SUBMIT_DIR:-.}/launch/_common.sh"
source "${common}"
parse_dry_run "$@"
set -- "${ARGS[@]}"
run env XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}" \
  srun --ntasks-per-node=1 python -m densedpo_jax.main --distributed "$@"
