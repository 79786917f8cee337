#!/usr/bin/env bash
# Runs a job on every worker of a Cloud TPU pod slice (or multi-slice: pass --config.mesh.dcn_shape).
# JAX detects the pod topology itself; the repository must already be on each worker
# (e.g. `gcloud compute tpus tpu-vm scp --recurse . $TPU:~/densedpo_jax --worker=all`).
# --dry-run prints the gcloud command instead of running it.
#
#   TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh [--dry-run] --config=configs/dense.py:paper --workdir=gs://bucket/run [flags...]
set -euo pipefail
source "$(dirname "$0")/_common.sh"
parse_dry_run "$@"
set -- "${ARGS[@]}"
: "${TPU:?name of the TPU VM}" "${ZONE:?zone of the TPU VM}"
args=$(printf '%q ' "$@")
run gcloud compute tpus tpu-vm ssh "${TPU}" --zone="${ZONE}" --worker=all --command \
  "cd ~/densedpo_jax && pip install -q -e '.[tpu]' && python -m densedpo_jax.main --distributed ${args}"
