#!/usr/bin/env bash
# Validation AUC parity of bf16 and float32 training on a real run (docs/training.md): the bundled
# recipe twice, amp: none and amp: bf16, same patient split, seed, initial weights and data order
# (both in parallel). Defaults: 3 epochs of 40 steps, what a loaded 2-core machine allows; on a
# quiet one pass EPOCHS=20 STEPS=0 for the full recipe.
#   scripts/bf16_parity.sh [RUNS_DIR]      (default runs/bf16-parity)
set -euo pipefail
cd "$(dirname "$0")/.."
X=${XRAYTRIAGE:-.venv/bin/xraytriage}
RUNS=${1:-runs/bf16-parity}
EPOCHS=${EPOCHS:-3}
STEPS=${STEPS:-40}
mkdir -p "$RUNS"
limit=(); [ "$STEPS" != 0 ] && limit=(--set "max_steps_per_epoch=$STEPS")
for amp in none bf16; do
  $X train configs/nih-default-compact.yaml --set epochs="$EPOCHS" "${limit[@]}" --set amp=$amp \
     --set progress=false --output "$RUNS/$amp" > "$RUNS/$amp.log" 2>&1 &
done
wait
grep -h "epoch" "$RUNS"/none.log "$RUNS"/bf16.log
