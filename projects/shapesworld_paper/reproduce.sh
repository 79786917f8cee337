#!/usr/bin/env bash
# Reproduces the paper's findings on ShapesWorld (configs/experiment.py here): pretrained, SFT,
# Vanilla/Structural/DenseDPO and the Tab. 4 ablations, 3 training seeds each, Appendix B.
# About 72 minutes on 2 CPU cores (stage 1 of regenerate_results.sh). Writes
# results/shapesworld.md and results/shapesworld_appendix_b.png of this folder; a rerun resumes
# (finished runs are read from the workdir). --dry-run prints the command instead of running it.
#
#   bash projects/shapesworld_paper/reproduce.sh [--dry-run] [--config.key=value ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
source launch/_common.sh
parse_dry_run "$@"
set -- "${ARGS[@]}"
WORKDIR="${WORKDIR:-workdirs/experiment}"
CMD=(python -m projects.shapesworld_paper.main
     --config=projects/shapesworld_paper/configs/experiment.py --workdir="$WORKDIR" "$@")
if ((DRY_RUN)); then
  show "${CMD[@]}"
  exit 0
fi
mkdir -p "$WORKDIR"
start=$(date +%s)
"${CMD[@]}" 2>&1 | tee -a "$WORKDIR/log.txt"
echo "reproduce: $(( ($(date +%s) - start) / 60 )) min" | tee -a "$WORKDIR/log.txt"
