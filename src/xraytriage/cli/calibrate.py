"""``xraytriage calibrate``: operating thresholds and calibration from held-out predictions.

The final model of a recipe is trained on every image, so it has no validation set of its
own; its thresholds and calibration are fitted on the out-of-fold predictions of the same
recipe's cross-validation (``RUN/oof_predictions.csv``), which saw every image exactly once
as unseen data. Any predictions CSV with ``prob_<label>`` and ground-truth columns works
(``val_predictions.csv`` of a training run too).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="set a checkpoint's calibration and thresholds from held-out (e.g. out-of-fold) predictions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="checkpoint to calibrate")
    p.add_argument(
        "--predictions", type=Path, required=True, help="held-out predictions CSV (prob_<label> + truth)"
    )
    p.add_argument("--method", choices=("temperature", "platt"), default="platt")
    p.add_argument(
        "--operating-point",
        default="youden",
        help="threshold rule: youden | f1 | sensitivity:0.9 (default youden)",
    )
    p.add_argument("--output", type=Path, required=True, help="calibrated checkpoint to write")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from xraytriage.errors import ConfigError
    from xraytriage.evaluate.calibration import calibrate_checkpoint, logit
    from xraytriage.evaluate.operating_points import parse_method
    from xraytriage.evaluate.predictions import (
        evaluable_labels,
        label_matrix,
        prob_matrix,
        read_predictions_csv,
    )
    from xraytriage.models import load_checkpoint

    checkpoint = load_checkpoint(args.model)
    frame = read_predictions_csv(args.predictions)
    available = set(evaluable_labels(frame))
    missing = [n for n in checkpoint.label_names if n not in available]
    if missing:
        raise ConfigError(f"{args.predictions}: no probability + ground truth for label(s) {missing}")
    names = list(checkpoint.label_names)
    # Out-of-fold probabilities are uncalibrated sigmoids of the fold models' logits.
    logits = logit(prob_matrix(frame, names))
    labels = label_matrix(frame, names)
    method, target = parse_method(args.operating_point)
    calibrated = calibrate_checkpoint(checkpoint, logits, labels, args.method, method, target)
    calibrated.metrics = {
        **calibrated.metrics,
        "calibration": {**calibrated.metrics["calibration"], "source": str(args.predictions)},
    }
    calibrated.save(args.output)
    known = ~np.isnan(labels)
    print(
        f"wrote {args.output}: {args.method} calibration and {args.operating_point} thresholds "
        f"from {len(frame)} held-out images ({int(known.sum())} known labels)"
    )
    for name in names:
        print(f"  {name:<22} threshold {calibrated.thresholds[name]:.3f}")
    return 0
