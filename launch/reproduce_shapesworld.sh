#!/usr/bin/env bash
# Reproduces the paper's findings on ShapesWorld (configs/experiment.py): pretrained, SFT,
# Vanilla/Structural/DenseDPO and the Tab. 4 ablations, 3 training seeds each, Appendix B.
# About 75 minutes on 2 CPU cores. Writes results/shapesworld.md and
# results/shapesworld_appendix_b.png; a rerun resumes (finished runs are read from the workdir).
#
#   bash launch/reproduce_shapesworld.sh [--config.key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${WORKDIR:-workdirs/experiment}"
mkdir -p "$WORKDIR"
start=$(date +%s)
python -m densedpo_jax.main --config=configs/experiment.py --workdir="$WORKDIR" "$@" \
  2>&1 | tee -a "$WORKDIR/log.txt"
echo "reproduce_shapesworld: $(( ($(date +%s) - start) / 60 )) min" | tee -a "$WORKDIR/log.txt"
