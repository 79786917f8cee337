#!/usr/bin/env bash
# Reproduces the paper's findings on ShapesWorld (configs/experiment.py): pretrained, SFT,
# Vanilla/Structural/DenseDPO and the Tab. 4 ablations, 3 training seeds each, Appendix B.
# About 72 minutes on 2 CPU cores (stage 1 of launch/regenerate_results.sh). Writes
# results/shapesworld.md and results/shapesworld_appendix_b.png; a rerun resumes (finished runs
# are read from the workdir).
# --dry-run prints the command instead of running it.
#
#   bash launch/reproduce_shapesworld.sh [--dry-run] [--config.key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_common.sh
parse_dry_run "$@"
set -- "${ARGS[@]}"
WORKDIR="${WORKDIR:-workdirs/experiment}"
if ((DRY_RUN)); then
  show python -m densedpo_jax.main --config=configs/experiment.py --workdir="$WORKDIR" "$@"
  exit 0
fi
mkdir -p "$WORKDIR"
start=$(date +%s)
python -m densedpo_jax.main --config=configs/experiment.py --workdir="$WORKDIR" "$@" \
  2>&1 | tee -a "$WORKDIR/log.txt"
echo "reproduce_shapesworld: $(( ($(date +%s) - start) / 60 )) min" | tee -a "$WORKDIR/log.txt"
