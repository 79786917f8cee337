#!/usr/bin/env bash
# Regenerates every table in results/ and in the README's Results section from the code at
# HEAD (about 2.5 hours on 2 CPU cores; a rerun resumes: finished runs are read from the workdir,
# and a run whose settings changed gets its own folder):
#   1. configs/experiment.py            all arms, 3 seeds, beta 500   -> results/shapesworld.*
#   2. configs/experiment.py:tuned      whole-video arms at the tuned setting -> shapesworld_tuned.*
#   3. configs/experiment.py:tune       the training-split sweep     -> results/shapesworld_tune.*
#   4. configs/experiment.py:motion     why DenseDPO slows clips    -> results/shapesworld_motion.*
#      and python -m densedpo_jax.motion_analysis                   -> results/motion_analysis.*
#   5. the main job (configs/dense.py)                              -> results/main_job.json
#   6. python -m densedpo_jax.results_tables --readme=README.md      (the README's tables)
#   7. the 2-process rehearsal (tests/test_multihost.py)            -> results/logs/multihost.txt
# Logs go to results/logs/. STAGES="1 2" runs some stages only; --dry-run prints the commands.
#
#   bash launch/regenerate_results.sh [--dry-run]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_common.sh
parse_dry_run "$@"
WORKDIR="${WORKDIR:-workdirs/experiment}"
STAGES="${STAGES:-1 2 3 4 5 6 7}"
LOGS=results/logs
run mkdir -p "$WORKDIR" "$LOGS"

logged() {  # logged NAME CMD...: runs CMD with its output in $LOGS/NAME.txt (and the console)
  local name=$1; shift
  if ((DRY_RUN)); then show "$@"; return; fi
  local start; start=$(date +%s)
  echo "regenerate_results: $name: $(show "$@")"
  "$@" 2>&1 | tee "$LOGS/$name.txt"
  echo "regenerate_results: $name: $(( ($(date +%s) - start) / 60 )) min" | tee -a "$LOGS/$name.txt"
}

experiment() {  # experiment ARG: one experiment call in the shared workdir
  logged "experiment_${1}" python -m densedpo_jax.main --config="configs/experiment.py:$1" \
    --workdir="$WORKDIR"
}

for stage in $STAGES; do
  case $stage in
    1) experiment shapesworld ;;
    2) experiment tuned ;;
    3) experiment tune ;;
    4) experiment motion
       logged motion_analysis python -m densedpo_jax.motion_analysis \
         --workdir="$WORKDIR" --out=results/motion_analysis ;;
    5) logged main_job python -m densedpo_jax.main --config=configs/dense.py \
         --workdir=workdirs/main_job
       run python -m densedpo_jax.results_tables --main_job=workdirs/main_job \
         --out=results/main_job.json ;;
    6) run python -m densedpo_jax.results_tables --readme=README.md ;;
    7) logged multihost python -m pytest -q -s -p no:cacheprovider tests/test_multihost.py \
         -k two_processes_match ;;
    *) echo "regenerate_results: unknown stage $stage (1-7)" >&2; exit 2 ;;
  esac
done
