"""``calibrate --predictions``: calibration, thresholds, the critical tier and the expected flag
rates from held-out predictions (the out-of-fold predictions of the recipe's cross-validation)."""

from __future__ import annotations

import argparse

from xraytriage.cli.common import resolve_model_path


def run_predictions(args: argparse.Namespace):
    import copy

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
    from xraytriage.stats import known_rows

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
            checkpoint, y_true=labels, y_score=logits, method=args.method, threshold_method=method,
            target=target, label_targets=parse_label_targets(args.label_target),
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
        labels, probs, label_names=names, critical=critical, thresholds=calibrated.thresholds,
        specificity=args.critical_specificity, required=bool(args.critical),
    )  # fmt: skip
    calibrated.expected_rates = {
        **(checkpoint.expected_rates or {}),
        **expected_rates(
            labels, probs, abnormal_score=calibrated.abnormal_probability(probs), label_names=names,
            findings=calibrated.findings, thresholds=calibrated.thresholds,
            flag_at=calibrated.study_flag_threshold, critical=calibrated.critical,
            prevalence=args.deployment_prevalence or None, source=str(args.predictions),
        ),
    }  # fmt: skip
    known = known_rows(labels)  # the one masking rule, over every label of every image
    done = (
        "the critical tier and expected flag rates (calibration and thresholds kept)"
        if args.keep_calibration
        else f"{args.method} calibration and {args.operating_point} thresholds"
    )
    print(f"calibrated: {done} from {len(frame)} held-out images ({int(known.sum())} known labels)")
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
    return calibrated
