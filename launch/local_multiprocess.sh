#!/usr/bin/env bash
# N JAX processes on this machine, each with its own CPU devices: a rehearsal of a multi-host
# run (per-process data sharding, global batch assembly, checkpoints written by all processes).
#
#   launch/local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS --config=configs/pretrain.py:quick [flags...]
set -euo pipefail
num_processes=${1:?number of processes}; devices=${2:?CPU devices per process}; shift 2
port=${PORT:-12355}
pids=()
for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" \
    python -m densedpo_jax.main --distributed --coordinator_address="localhost:${port}" \
      --num_processes="${num_processes}" --process_id="${i}" "$@" \
      > >(sed "s/^/[process ${i}] /") 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "${pid}" || status=$?; done
exit "${status}"
