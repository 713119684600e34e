#!/usr/bin/env bash
# Localiser CV + final training on a GPU machine (the `device` tool): two candidate widths,
# 5-fold patient-grouped CV each, then the final localiser on every box image for each.
# Needs runs/localiser/boxes.npz (from `xraytriage localiser pack`, see configs/localiser/nih-boxes.yaml)
# and the MONAI/pydicom wheels in .whl; writes to $OUT (default runs/localiser/gpu).
set -euo pipefail
OUT=${OUT:-runs/localiser/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 - <<'PY'
import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
start=$(date +%s)
run() {  # name, extra --set options...
  local name=$1; shift
  local t0=$(date +%s)
  python3 -m xraytriage.cli.main localiser cv runs/localiser/boxes.npz --config configs/localiser/nih-boxes.yaml \
      --no-progress -o "$OUT/cv-$name" "$@" > "$OUT/cv-$name.log" 2>&1 || { tail -30 "$OUT/cv-$name.log"; return 1; }
  grep -E "T\(IoBB\)=0.1 Acc|Pointing game" "$OUT/cv-$name/localization.md" | head -2
  python3 -m xraytriage.cli.main localiser train runs/localiser/boxes.npz --config configs/localiser/nih-boxes.yaml \
      --no-progress -o "$OUT/localiser-$name.pt" "$@" >> "$OUT/cv-$name.log" 2>&1
  echo "$name: $(( $(date +%s) - t0 )) s"
}
run base
if (( $(date +%s) - start < 200 )); then run long --set epochs=120; fi
(cd "$OUT" && tar czf cv.tgz cv-* && rm -rf cv-*/ cv-*.log)
ls -la "$OUT"
