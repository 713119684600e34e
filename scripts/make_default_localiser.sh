#!/usr/bin/env bash
# Makes the bundled model's box-supervised localiser and its numbers in docs/model-card.md, from
# the repository root, with the project's own commands (about 100 minutes on a 2-core CPU; the
# CV and the final training can run side by side, one thread each).
#
#   scripts/make_default_localiser.sh [RUNS_DIR]      (default runs/localiser)
#
# Steps: read the NIH box images once (inputs at the localiser's contract + boxes), 3-fold
# patient-grouped CV (out-of-fold localisation benchmark with patient-level bootstrap CIs and the
# random same-size control), the final localiser on every box image, attached to the bundled
# classifier, then Grad-CAM of the bundled classifier on the same images for comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
X=${XRAYTRIAGE:-.venv/bin/xraytriage}
CONFIG=configs/localiser/nih-boxes.yaml
RUNS=${1:-runs/localiser}
MODEL=src/xraytriage/assets/default_model/model.pt
DATA=../shared/data
mkdir -p "$RUNS"
[ -f "$RUNS/boxes128.npz" ] || $X localiser pack --boxes $DATA/nih/meta/BBox_List_2017.csv.gz \
    --images $DATA/nih/images --labels $DATA/nih/meta/Data_Entry_2017_v2020.csv.gz \
    --config $CONFIG -o "$RUNS/boxes128.npz"
[ -f "$RUNS/cv/localization.csv" ] || OMP_NUM_THREADS=1 $X localiser cv "$RUNS/boxes128.npz" --config $CONFIG \
    --set threads=1 -o "$RUNS/cv" &
[ -f "$RUNS/localiser.pt" ] || OMP_NUM_THREADS=1 $X localiser train "$RUNS/boxes128.npz" --config $CONFIG \
    --set threads=1 -o "$RUNS/localiser.pt" &
wait
$X localiser attach --model $MODEL --localiser "$RUNS/localiser.pt" -o $MODEL
# Grad-CAM of the bundled classifier on the same box images (it saw these images' labels in
# training, so if anything this flatters Grad-CAM); the localiser's own numbers are the CV's.
$X localize-eval --model $MODEL --compare gradcam --images $DATA/nih/images \
    --boxes $DATA/nih/meta/BBox_List_2017.csv.gz --output "$RUNS/gradcam"
echo "localiser out of fold: $RUNS/cv/localization.md; Grad-CAM: $RUNS/gradcam/localization.md"
