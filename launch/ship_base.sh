#!/usr/bin/env bash
# Copies the exported weights (the `params` item: EMA for pretraining) of a run's latest
# checkpoint into a small, committable checkpoint folder that `config.init_from` reads.
# --dry-run prints the copy commands instead of running them.
#
#   launch/ship_base.sh [--dry-run] workdirs/pretrain assets/shapesworld_base
set -euo pipefail
source "$(dirname "$0")/_common.sh"
parse_dry_run "$@"
set -- "${ARGS[@]}"
workdir=${1:?run workdir}; out=${2:?output folder}
step=$(ls "${workdir}/checkpoints" | grep -E '^[0-9]+$' | sort -n | tail -1 || true)
[ -n "${step}" ] || { echo "no checkpoint under ${workdir}/checkpoints" >&2; exit 1; }
run rm -rf "${out}.tmp"
run mkdir -p "${out}.tmp/${step}"
run cp -r "${workdir}/checkpoints/${step}/params" "${workdir}/checkpoints/${step}/_CHECKPOINT_METADATA" \
  "${out}.tmp/${step}/"
run rm -rf "${out}"
run mv "${out}.tmp" "${out}"
if ((DRY_RUN)); then exit 0; fi
du -sh "${out}"
echo "shipped ${workdir} step ${step} -> ${out}"
