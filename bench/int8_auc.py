"""Does the int8 backend rank held-out radiographs like float32? Triage AUC (P(abnormal) against
the folder label) of both ONNX backends on the same images, their difference, the rank
correlation and the study-flag agreement.

    .venv/bin/python bench/int8_auc.py --model src/xraytriage/assets/default_model/model.pt \
        --images ../shared/data/pediatric [--every 2] [--json out.json]

``--images`` holds one subfolder per class; ``NORMAL`` (any case) is the negative class, every
other subfolder positive. The pediatric images were never trained on by the bundled model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder with class subfolders")
    parser.add_argument("--every", type=int, default=1, help="use every n-th image (default all)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from xraytriage.io import iter_input_files
    from xraytriage.models.checkpoint import load_checkpoint
    from xraytriage.models.inference import OnnxPredictor
    from xraytriage.models.quantize import load_calibration_images, parity_report
    from xraytriage.stats import roc_auc

    checkpoint = load_checkpoint(args.model)
    files = sorted(iter_input_files([args.images]))[:: args.every]
    files = [f for f in files if f.parent != args.images]
    images, names, _ = load_calibration_images(files, checkpoint, len(files))
    label_of = {f.name: float(f.parent.name.lower() != "normal") for f in files}
    y = np.array([label_of[n] for n in names])
    fp32 = OnnxPredictor(args.model, checkpoint=checkpoint)
    int8 = OnnxPredictor(args.model, checkpoint=checkpoint, int8=True)
    logits32 = np.concatenate([fp32.predict_logits(images[i : i + 32]) for i in range(0, len(images), 32)])
    logits8 = np.concatenate([int8.predict_logits(images[i : i + 32]) for i in range(0, len(images), 32)])
    a32 = checkpoint.abnormal_probability(checkpoint.probabilities(logits32))
    a8 = checkpoint.abnormal_probability(checkpoint.probabilities(logits8))
    auc32, auc8 = float(roc_auc(y, a32)), float(roc_auc(y, a8))
    report = {
        "model": str(args.model),
        "int8_file": str(int8.onnx_path),
        "images": len(names),
        "positives": int(y.sum()),
        "triage_auc_fp32": round(auc32, 5),
        "triage_auc_int8": round(auc8, 5),
        "auc_difference": round(auc8 - auc32, 5),
        **parity_report(checkpoint, logits32, logits8),
    }
    print(
        f"{len(names)} images of {args.images} ({int(y.sum())} positive): triage AUC fp32 {auc32:.4f}, "
        f"int8 {auc8:.4f} (difference {auc8 - auc32:+.4f}); P(abnormal) rank correlation "
        f"{report['abnormal_rank_correlation']}, study flags agree on {100 * report['study_flag_agreement']:.1f}%"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
