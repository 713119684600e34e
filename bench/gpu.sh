#!/usr/bin/env bash
# The GPU run of issue 28 (bench/gpu_run.py), with what the GPU machine lacks carried along.
#
#   bench/gpu.sh --prepare      here, once: wheels the GPU image lacks -> .gpu/whl, NIH images -> .gpu/data
#   bench/gpu.sh                on the GPU machine (the `device` tool, carry [".gpu"]): install, run (< 8 min)
#   bench/gpu.sh --dry-run      anywhere: the same steps on the CPU, small (no install)
#
# The GPU image has torch, numpy, pandas, scikit-learn, pillow, onnx(runtime), pyyaml, tqdm but not
# MONAI, pydantic or pydicom (docs/training.md): their pure-Python / manylinux wheels for Python 3.12
# travel in .gpu/whl and are installed with --no-index into /tmp/site. The NIH 256 px images of
# images/ and meta/ (about 26 MB) travel in .gpu/data/nih; the whole .gpu folder stays under the
# tool's 64 MiB. Results: $OUT/gpu_run.json (and the printed lines).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
WHEELS="monai==1.6.1 pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 pydicom==3.0.2"

if [[ "${1:-}" == "--prepare" ]]; then
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> "$(git rev-parse --git-path info/exclude)"
    mkdir -p .gpu/whl .gpu/data/nih
    PY=${PYTHON:-.venv/bin/python}
    # shellcheck disable=SC2086
    $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/whl $WHEELS
    rsync -a ../shared/data/nih/images ../shared/data/nih/meta .gpu/data/nih/
    du -sh .gpu
    exit 0
fi

if [[ "${1:-}" == "--dry-run" ]]; then
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
    exec "${PYTHON:-python3}" bench/gpu_run.py --dry-run --out "${OUT:-runs/gpu-dry}"
fi

echo "gpu.sh: installing carried wheels ($(ls .gpu/whl | wc -l) files)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 470 python3 bench/gpu_run.py --data .gpu/data/nih --out "${OUT:-runs/gpu}"
