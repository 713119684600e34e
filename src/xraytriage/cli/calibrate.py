"""``xraytriage calibrate``: operating thresholds and calibration from held-out predictions.

The final model of a recipe is trained on every image, so it has no validation set of its
own; its thresholds and calibration are fitted on the out-of-fold predictions of the same
recipe's cross-validation (``RUN/oof_predictions.csv``), which saw every image exactly once
as unseen data. Any predictions CSV with ``prob_<label>`` and ground-truth columns works
(``val_predictions.csv`` of a training run too).

It also sets the critical tier (``--critical``, Pneumothorax by default: its own threshold at
``--critical-specificity`` among the held-out images without the finding) and stores the flag
rates the service should expect at the deployment prevalence (``expected_rates``), which its
drift monitor compares with.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xraytriage.cli.common import resolve_model_path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="set a checkpoint's calibration and thresholds from held-out (e.g. out-of-fold) predictions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        metavar="MODEL",
        default=None,
        help="checkpoint to calibrate: a .pt file, a fetched published model NAME, or `default` "
        "(the bundled model, also when left out)",
    )
    p.add_argument(
        "--predictions", type=Path, required=True, help="held-out predictions CSV (prob_<label> + truth)"
    )
    p.add_argument("--method", choices=("temperature", "platt"), default="platt")
    p.add_argument(
        "--operating-point",
        default="specificity:0.9",
        help="threshold rule: specificity:0.9 (default: flag a finding at 90%% specificity) | "
        "sensitivity:0.9 | youden | f1",
    )
    p.add_argument(
        "--label-target",
        action="append",
        default=[],
        metavar="LABEL=TARGET",
        help="per-label target for the sensitivity/specificity rule, e.g. Pneumothorax=0.8 (repeatable)",
    )
    p.add_argument(
        "--max-normal-flag-rate",
        type=float,
        default=None,
        metavar="RATE",
        help="then raise the findings' thresholds together until at most RATE of the normal "
        "(No Finding) images have any finding flagged, e.g. 0.15",
    )
    p.add_argument(
        "--deployment-prevalence",
        type=float,
        default=0.46,
        metavar="P",
        help="calibrate P(abnormal) to this share of abnormal studies (default 0.46, the NIH "
        "ChestX-ray14 population; 0 keeps the calibration set's own prevalence)",
    )
    p.add_argument(
        "--critical",
        action="append",
        default=[],
        metavar="FINDING",
        help="a finding that needs a radiologist now: its studies get the critical tier and go first "
        "(repeatable; default Pneumothorax when the model has it; 'none' for no critical tier)",
    )
    p.add_argument(
        "--critical-specificity",
        type=float,
        default=0.99,
        metavar="S",
        help="the critical threshold keeps this share of held-out images without the finding "
        "below it (default 0.99); never below the finding's own threshold",
    )
    p.add_argument(
        "--keep-calibration",
        action="store_true",
        help="keep the checkpoint's calibration and thresholds; only set the critical tier and the "
        "expected flag rates from the predictions (put through that calibration)",
    )
    p.add_argument("--output", type=Path, required=True, help="calibrated checkpoint to write")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import copy

    import numpy as np

    from xraytriage.errors import ConfigError
    from xraytriage.evaluate.calibration import calibrate_checkpoint, logit
    from xraytriage.evaluate.flag_rates import critical_thresholds, expected_rates, resolve_critical
    from xraytriage.evaluate.operating_points import parse_label_targets, parse_method
    from xraytriage.evaluate.predictions import (
        evaluable_labels,
        label_matrix,
        prob_matrix,
        read_predictions_csv,
    )
    from xraytriage.labels import ABNORMAL
    from xraytriage.models import load_checkpoint

    checkpoint = load_checkpoint(resolve_model_path(args.model))
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
    if args.max_normal_flag_rate is not None and not 0 < args.max_normal_flag_rate < 1:
        raise ConfigError("--max-normal-flag-rate must be in (0, 1)")
    prevalence = {}
    if args.deployment_prevalence:
        if not 0 < args.deployment_prevalence < 1:
            raise ConfigError("--deployment-prevalence must be in (0, 1), or 0 to keep the data's own")
        if ABNORMAL in names:
            prevalence[ABNORMAL] = args.deployment_prevalence
    if args.keep_calibration:
        calibrated = copy.copy(checkpoint)  # its calibration and thresholds, as they are
        calibrated.metrics = dict(checkpoint.metrics)
    else:
        calibrated = calibrate_checkpoint(
            checkpoint, logits, labels, args.method, method, target,
            label_targets=parse_label_targets(args.label_target),
            deployment_prevalence=prevalence,
            max_normal_flag_rate=args.max_normal_flag_rate,
        )  # fmt: skip
        calibrated.metrics = {
            **calibrated.metrics,
            "calibration": {**calibrated.metrics["calibration"], "source": str(args.predictions)},
        }
    probs = calibrated.probabilities(logits)
    critical = resolve_critical(calibrated.findings, args.critical, names)
    calibrated.critical = critical_thresholds(
        labels, probs, names, critical, calibrated.thresholds, args.critical_specificity,
        required=bool(args.critical),
    )  # fmt: skip
    calibrated.expected_rates = {
        **(checkpoint.expected_rates or {}),
        **expected_rates(
            labels, probs, calibrated.abnormal_probability(probs), names, calibrated.findings,
            calibrated.thresholds, calibrated.study_flag_threshold, calibrated.critical,
            prevalence=args.deployment_prevalence or None, source=str(args.predictions),
        ),
    }  # fmt: skip
    calibrated.save(args.output)
    known = ~np.isnan(labels)
    done = (
        "the critical tier and expected flag rates (calibration and thresholds kept)"
        if args.keep_calibration
        else f"{args.method} calibration and {args.operating_point} thresholds"
    )
    print(f"wrote {args.output}: {done} from {len(frame)} held-out images ({int(known.sum())} known labels)")
    for name in names:
        crit = calibrated.critical.get(name)
        extra = f"  critical at {crit:.3f} ({args.critical_specificity:.0%} specificity)" if crit else ""
        print(f"  {name:<22} threshold {calibrated.threshold(name):.3f}{extra}")
    rates = calibrated.expected_rates
    print(
        f"  expected at deployment: {rates['flagged']:.1%} of studies flagged, {rates['critical']:.1%} critical "
        f"(from {rates['n']} held-out images; the service's /metrics compares with these)"
    )
    record = {} if args.keep_calibration else calibrated.metrics.get("calibration") or {}
    for name, shift in (record.get("deployment_prevalence") or {}).items():
        print(
            f"  {name}: probabilities moved from the calibration set's prevalence "
            f"{shift['calibration_prevalence']:.2f} to the deployment prevalence {shift['deployment_prevalence']:.2f}"
        )
    cap = record.get("normal_flag_cap")
    if cap:
        print(
            f"  normal images with any finding flagged: {cap['rate_before']:.1%} -> {cap['rate_after']:.1%} "
            f"(cap {cap['max_rate']:.0%}, {cap['normal_images']} normal images)"
        )
    return 0
