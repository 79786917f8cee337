#!/usr/bin/env bash
# N JAX processes on this machine, each with its own CPU devices: a rehearsal of a multi-host
# run (per-process data sharding, global batch assembly, checkpoints written by all processes).
# The processes meet at 127.0.0.1:$PORT (default 12355); --dry-run prints their commands.
#
#   launch/local_multiprocess.sh [--dry-run] NUM_PROCESSES DEVICES_PER_PROCESS --config=configs/pretrain.py:quick [flags...]
set -euo pipefail
source "$(dirname "$0")/_common.sh"
parse_dry_run "$@"
set -- "${ARGS[@]}"
num_processes=${1:?number of processes}; devices=${2:?CPU devices per process}; shift 2
port=${PORT:-12355}
pids=()
for ((i = 0; i < num_processes; i++)); do
  cmd=(env JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${devices}"
       python -m densedpo_jax.main --distributed --coordinator_address="127.0.0.1:${port}"
       --num_processes="${num_processes}" --process_id="${i}" "$@")
  if ((DRY_RUN)); then show "${cmd[@]}"; continue; fi
  "${cmd[@]}" > >(sed "s/^/[process ${i}] /") 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "${pid}" || status=$?; done
exit "${status}"
