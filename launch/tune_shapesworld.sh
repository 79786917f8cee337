#!/usr/bin/env bash
# Tunes DPO's free settings (beta, learning rate, number of steps) on TRAINING prompts only, for
# the ShapesWorld experiment: the first seed of each arm in $ARMS, each setting evaluated at step
# 50 and at the end on 18 training-split prompts x 4 samples against the base model. Reuses the
# experiment's pairs (run reproduce_shapesworld.sh first, or let this generate them). About 3.5
# minutes an arm and setting on 2 CPU cores.
#
#   bash launch/tune_shapesworld.sh                 # the default grid below
#   GRID="500:1e-4 100:1e-4" ARMS=pretrained,dense bash launch/tune_shapesworld.sh
#   bash launch/tune_shapesworld.sh --dry-run       # prints the commands instead
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_common.sh
parse_dry_run "$@"
SOURCE="${SOURCE:-workdirs/experiment}"
ROOT="${ROOT:-workdirs/tune}"
GRID="${GRID:-500:1e-4 2500:1e-4}"
ARMS="${ARMS:-pretrained,vanilla,dense}"
run mkdir -p "$ROOT"
for setting in $GRID; do
  beta="${setting%%:*}"; lr="${setting##*:}"
  dir="$ROOT/beta${beta}_lr${lr}"
  run mkdir -p "$dir"
  for pairs in pairs_guided pairs_vanilla; do  # Share the pair sets (and their labels).
    if [[ -f "$SOURCE/$pairs/pairs.json" && ! -e "$dir/$pairs" ]]; then  # complete sets only
      run ln -s "$(realpath "$SOURCE/$pairs")" "$dir/$pairs"
    fi
  done
  if ((DRY_RUN)); then
    show python -m densedpo_jax.main --config=configs/experiment.py --workdir="$dir" \
      --config.experiment.arms="$ARMS" --config.experiment.seeds='(0,)' \
      --config.experiment.appendix_b.num_videos=0 \
      --config.videos.split_eval=train --config.evaluate.max_prompts=18 \
      --config.dpo.beta="$beta" --config.optim.lr="$lr" \
      --config.experiment.results="$dir/report.md"
    continue
  fi
  python -m densedpo_jax.main --config=configs/experiment.py --workdir="$dir" \
    --config.experiment.arms="$ARMS" --config.experiment.seeds='(0,)' \
    --config.experiment.appendix_b.num_videos=0 \
    --config.videos.split_eval=train --config.evaluate.max_prompts=18 \
    --config.dpo.beta="$beta" --config.optim.lr="$lr" \
    --config.experiment.results="$dir/report.md" >"$dir/log.txt" 2>&1 \
    || { echo "tune_shapesworld: $setting failed; see $dir/log.txt" >&2; exit 1; }
  echo "tune_shapesworld: $setting done ($dir/report.md)"
done
if ((DRY_RUN)); then exit 0; fi
python - "$ROOT" <<'PY'
import glob, json, os, sys
keys = ("visual_quality", "text_alignment", "artifact_share", "fast_share", "mean_speed")
print("| setting | arm | checkpoint | " + " | ".join(keys) + " |\n" + "|---" * (len(keys) + 3) + "|")
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*", "results.json"))):
  setting = os.path.basename(os.path.dirname(path))
  for r in json.load(open(path))["runs"]:
    for label, ev in (("early", r.get("eval_early")), ("final", r["eval"])):
      if ev:
        print(f"| {setting} | {r['arm']} | {label} | " + " | ".join(f"{ev[k]:.3f}" for k in keys) + " |")
PY
