#!/usr/bin/env bash
# Regenerates every result of this project and the repository's published records from the code
# at HEAD (about 4 hours on 2 CPU cores; a rerun resumes: finished runs are read from the
# workdir, and a run whose settings changed gets its own folder). R is
# projects/shapesworld_paper/results, CONFIG projects/shapesworld_paper/configs/experiment.py:
#   1. CONFIG                 all arms, 3 seeds, beta 500          -> R/shapesworld.*
#   2. CONFIG:tuned           whole-video arms at the tuned setting -> R/shapesworld_tuned.*
#   3. CONFIG:tune            the training-split sweep             -> R/shapesworld_tune.*
#   4. CONFIG:motion          why DenseDPO slows clips             -> R/shapesworld_motion.*
#      and python -m projects.shapesworld_paper.motion_analysis    -> R/motion_analysis.*
#      and CONFIG:objective    objective variants that keep motion  -> R/shapesworld_objective.*
#      and python -m projects.shapesworld_paper.segment_speed      -> R/segment_speed.*
#   5. the main job (configs/dense.py)                             -> results/main_job.json
#   6. python -m projects.shapesworld_paper.tables                  (the READMEs' tables)
#   7. the 2-process rehearsal (tests/test_multihost.py)           -> results/logs/multihost.txt
# Logs go to R/logs/ (stages 1-4) and results/logs/ (5, 7). STAGES="1 2" runs some stages only;
# --dry-run prints the commands. Run from anywhere:
#
#   bash projects/shapesworld_paper/regenerate_results.sh [--dry-run]
set -euo pipefail
cd "$(dirname "$0")/../.."
source launch/_common.sh
parse_dry_run "$@"
PROJECT=projects/shapesworld_paper
WORKDIR="${WORKDIR:-workdirs/experiment}"
STAGES="${STAGES:-1 2 3 4 5 6 7}"
LOGS=$PROJECT/results/logs
run mkdir -p "$WORKDIR" "$LOGS" results/logs

logged() {  # logged DIR NAME CMD...: runs CMD with its output in DIR/NAME.txt (and the console)
  local dir=$1 name=$2; shift 2
  if ((DRY_RUN)); then show "$@"; return; fi
  local start; start=$(date +%s)
  echo "regenerate_results: $name: $(show "$@")"
  "$@" 2>&1 | tee "$dir/$name.txt"
  echo "regenerate_results: $name: $(( ($(date +%s) - start) / 60 )) min" | tee -a "$dir/$name.txt"
}

experiment() {  # experiment ARG: one experiment call in the shared workdir
  logged "$LOGS" "experiment_${1}" python -m projects.shapesworld_paper.main \
    --config="$PROJECT/configs/experiment.py:$1" --workdir="$WORKDIR"
}

for stage in $STAGES; do
  case $stage in
    1) experiment shapesworld ;;
    2) experiment tuned ;;
    3) experiment tune ;;
    4) experiment motion
       logged "$LOGS" motion_analysis python -m projects.shapesworld_paper.motion_analysis \
         --workdir="$WORKDIR" --out="$PROJECT/results/motion_analysis"
       experiment objective
       logged "$LOGS" segment_speed python -m projects.shapesworld_paper.segment_speed \
         --workdir="$WORKDIR" --arms=dense,dense:pos=1 --out="$PROJECT/results/segment_speed" ;;
    5) logged results/logs main_job python -m densedpo_jax.main --config=configs/dense.py \
         --workdir=workdirs/main_job
       run python -m projects.shapesworld_paper.tables --main_job=workdirs/main_job \
         --out=results/main_job.json ;;
    6) run python -m projects.shapesworld_paper.tables --readme=README.md \
         --readme="$PROJECT/README.md" ;;
    7) logged results/logs multihost python -m pytest -q -s -p no:cacheprovider \
         tests/test_multihost.py -k two_processes_match ;;
    *) echo "regenerate_results: unknown stage $stage (1-7)" >&2; exit 2 ;;
  esac
done
