#!/usr/bin/env bash
# Runs a job on every worker of a Cloud TPU pod slice (or multi-slice: pass --config.mesh.dcn_shape).
# JAX detects the pod topology itself; the repository must already be on each worker
# (e.g. `gcloud compute tpus tpu-vm scp --recurse . $TPU:~/densedpo_jax --worker=all`).
#
#   TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh --config=configs/dense.py:paper --workdir=gs://bucket/run [flags...]
set -euo pipefail
: "${TPU:?name of the TPU VM}" "${ZONE:?zone of the TPU VM}"
args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "${TPU}" --zone="${ZONE}" --worker=all --command \
  "cd ~/densedpo_jax && pip install -q -e '.[tpu]' && python -m densedpo_jax.main --distributed ${args}"
