#!/usr/bin/env bash
# Copies the exported weights (the `params` item: EMA for pretraining) of a run's latest
# checkpoint into a small, committable checkpoint folder that `config.init_from` reads.
#
#   launch/ship_base.sh workdirs/pretrain assets/shapesworld_base
set -euo pipefail
workdir=${1:?run workdir}; out=${2:?output folder}
step=$(ls "${workdir}/checkpoints" | grep -E '^[0-9]+$' | sort -n | tail -1)
[ -n "${step}" ] || { echo "no checkpoint under ${workdir}/checkpoints" >&2; exit 1; }
rm -rf "${out}.tmp" && mkdir -p "${out}.tmp/${step}"
cp -r "${workdir}/checkpoints/${step}/params" "${workdir}/checkpoints/${step}/_CHECKPOINT_METADATA" \
  "${out}.tmp/${step}/"
rm -rf "${out}" && mv "${out}.tmp" "${out}"
du -sh "${out}"
echo "shipped ${workdir} step ${step} -> ${out}"
