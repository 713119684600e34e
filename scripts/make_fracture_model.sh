#!/usr/bin/env bash
# Makes the bundled fracture model and the body-part router, and every number in
# docs/fracture-model-card.md and docs/routing.md, from the repository root with the project's
# own commands. About 1.5 hours on a busy shared 2-core CPU (the 20-epoch CV and final model,
# the router, the localiser's CV). One thread per process: on an oversubscribed CPU, PyTorch's
# default thread pool spins and ran 20-30x slower here.
#
#   scripts/make_fracture_model.sh [RUNS_DIR]      (default runs/fracture)
#
# Independent of the chest model (scripts/make_default_model.sh): run it after that one or
# alone; it writes only src/xraytriage/assets/fracture_model/ and .../body_part_router/.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
X=${XRAYTRIAGE:-.venv/bin/xraytriage}
PY=${PYTHON:-.venv/bin/python}
CONFIG=configs/fracatlas-fracture.yaml
RUNS=${1:-runs/fracture}
FRACTURE_DIR=src/xraytriage/assets/fracture_model
ROUTER_DIR=src/xraytriage/assets/body_part_router
DATA=../shared/data
mkdir -p "$RUNS" "$FRACTURE_DIR" "$ROUTER_DIR"

# 1. the fracture recipe's honest numbers: 2-fold CV grouped by FracAtlas `group` (no patient
#    ids), out-of-fold predictions for every readable image; 2. side by side, the final model on
#    every readable image (no validation set, last epoch kept). One after the other (the two
#    would build the same image cache at once); the shipped model's runs went side by side
#    once the cache existed.
[ -f "$RUNS/cv/oof_predictions.csv" ] || $X cv $CONFIG --folds 2 --set progress=false --output "$RUNS/cv"
[ -f "$RUNS/final/best.pt" ] || $X train $CONFIG --set progress=false data.val_fraction=0 --output "$RUNS/final"
# 3. calibration and the operating point from the out-of-fold predictions: Platt scaling,
#    fracture flagged at Youden's threshold, P(fracture) at FracAtlas's own prevalence
$X calibrate --model "$RUNS/final/best.pt" --predictions "$RUNS/cv/oof_predictions.csv" \
    --method platt --operating-point youden --deployment-prevalence 0 --output "$FRACTURE_DIR/model.pt"
# 3b. its ONNX twin next to it (triage's default backend; the export checks parity with PyTorch)
$X export --model "$FRACTURE_DIR/model.pt" --output "$FRACTURE_DIR/model.onnx"
# 4. the model card's tables: AUC with group-bootstrap CIs within each resolution kind,
#    sensitivity / specificity / kappa at the operating point, study level, shortcut audit
$PY scripts/fracture_card_tables.py "$RUNS/cv/oof_predictions.csv" $DATA/msk/fracatlas \
    "$FRACTURE_DIR/model.pt" "$RUNS/card-tables.json" > "$RUNS/card-tables.md"
$X evaluate --predictions "$RUNS/cv/oof_predictions.csv" --dataset fracatlas --root $DATA/msk/fracatlas \
    --group-by collection --operating-point youden --output "$RUNS/eval-oof" --quiet

# 4b. the localiser on the fracture boxes (numbers only, nothing shipped): the films with a box,
#     2-fold CV grouped by `group`, next to the random same-size control and the box prior
LOC=configs/localiser/fracatlas-boxes.yaml
[ -f "$RUNS/localiser/boxes128.npz" ] || $X localiser pack --dataset fracatlas --root $DATA/msk/fracatlas \
    --config $LOC -o "$RUNS/localiser/boxes128.npz"
[ -f "$RUNS/localiser/cv/localization.csv" ] || $X localiser cv "$RUNS/localiser/boxes128.npz" --config $LOC \
    --set threads=1 --no-progress -o "$RUNS/localiser/cv"
$X localiser cv "$RUNS/localiser/boxes128.npz" --config $LOC --baseline prior --no-progress -o "$RUNS/localiser/prior"
# 4c. the card's other lever rows (issue 24), only with ABLATIONS=1 (about 35 min each here): the
#     same 2-fold grouped CV as step 1 at the earlier 10 epochs, at 128 px (the base row) and at
#     192 px, and at 192 px with the shipped 20 epochs; their AUC tables come from the same card script (ignore their operating-point columns)
if [ "${ABLATIONS:-0}" = 1 ]; then
    for lever in "base10:epochs=10" "size192:preprocess.size=192 epochs=10" "size192e20:preprocess.size=192"; do
        name=${lever%%:*}
        [ -f "$RUNS/lever-$name/oof_predictions.csv" ] || $X cv $CONFIG --folds 2 \
            --set progress=false ${lever#*:} --output "$RUNS/lever-$name"
        $PY scripts/fracture_card_tables.py "$RUNS/lever-$name/oof_predictions.csv" $DATA/msk/fracatlas \
            "$FRACTURE_DIR/model.pt" "$RUNS/lever-$name/card-tables.json" > "$RUNS/lever-$name/card-tables.md"
        # paired: the shipped recipe minus this lever, on the same folds, group bootstrap
        $PY scripts/fracture_lever_diff.py "$RUNS/cv/oof_predictions.csv" "$RUNS/lever-$name/oof_predictions.csv" \
            $DATA/msk/fracatlas > "$RUNS/lever-$name/paired-diff.txt"
    done
fi

# 5. the body-part router: table of every shared image with its body part, one training run
#    whose 20% held-out patients/groups give the routing accuracy, shipped as trained
$PY scripts/make_body_part_table.py $DATA runs/router/body_parts.csv
[ -f runs/router/train/best.pt ] || $X train configs/body-part-router.yaml --set progress=false --output runs/router/train
cp runs/router/train/best.pt "$ROUTER_DIR/model.pt"
$PY scripts/routing_accuracy.py runs/router/train/val_predictions.csv runs/router/body_parts.csv \
    > "$RUNS/routing-accuracy.md"
echo "tables: $RUNS/card-tables.md and $RUNS/routing-accuracy.md"
