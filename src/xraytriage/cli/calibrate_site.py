"""``calibrate --site-normals`` (one mode of ``cli/calibrate``): score the site's normals, set the thresholds, check them on
the labelled sample if given, and print what was done (the same record goes into the
checkpoint's metrics and the ``.calibration.json`` report)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from xraytriage.errors import ConfigError


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def _ci(pair: tuple[float, float]) -> str:
    return f"95% CI {pair[0]:.1%}-{pair[1]:.1%}"


def run_site_calibration(checkpoint, args: argparse.Namespace) -> dict[str, Any]:
    """Set ``checkpoint``'s finding and study thresholds from the site's normals, in place."""
    from xraytriage.cli.site_scoring import score_images
    from xraytriage.evaluate.site_calibration import raise_critical, site_expected_rates, site_thresholds
    from xraytriage.labels import ABNORMAL

    scored = score_images(checkpoint, args.site_normals, workers=args.workers)
    for line in scored.errors:
        print(f"  skipped: {line}")
    if not scored.paths:
        raise ConfigError(f"no readable image under {', '.join(map(str, args.site_normals))}")
    findings = list(checkpoint.findings)
    columns = [checkpoint.label_names.index(n) for n in findings]
    had_study_threshold = checkpoint.study_flag_threshold is not None
    if args.flag_by == "abnormal" and not had_study_threshold:
        raise ConfigError(
            f"{args.model}: --flag-by abnormal needs a model with an Abnormal output and threshold"
        )
    study_label = ABNORMAL if args.flag_by == "abnormal" else None
    before = {name: checkpoint.threshold(name) for name in findings}
    if had_study_threshold:
        before[ABNORMAL] = checkpoint.threshold(ABNORMAL)
    result = site_thresholds(
        scored.probabilities[:, columns], scored.abnormal, findings, study_label,
        args.finding_rate, args.any_finding_rate, args.flag_rate,
    )  # fmt: skip
    old_t = np.array([before[n] for n in findings])
    old_listed = np.any(scored.probabilities[:, columns] >= old_t, axis=1)
    old_flag = checkpoint.study_flagged(scored.abnormal, old_listed)
    report = result.report
    report["unreadable"] = len(scored.errors)
    report["sources"] = [str(p) for p in args.site_normals]
    report["before"] = {
        "thresholds": before,
        "any_finding_rate": float(old_listed.mean()),
        "flagged_rate": float(old_flag.mean()),
    }
    seen = checkpoint.seen_in_training(scored.paths)
    if seen:
        result.warnings.append(f"{len(seen)} of the normal images are the model's own training images")
    checkpoint.thresholds = {**checkpoint.thresholds, **result.thresholds}
    rule = {k: v for k, v in checkpoint.abnormal.items() if k != "flag_by"}
    checkpoint.abnormal = rule if study_label else {**rule, "flag_by": "findings"}
    critical = dict(checkpoint.critical or {})
    raised = raise_critical(critical, checkpoint.thresholds)
    checkpoint.critical = critical
    report["critical_raised"] = {name: {"was": old, "now": new} for name, (old, new) in raised.items()}
    hits = _hits(checkpoint, scored, findings)
    sample = None
    if args.site_labels:
        report["labelled_check"], sample = _labelled(
            checkpoint, args, scored.paths, findings, columns, study_label
        )
    if sample is not None and sample[4].any() and (~sample[4]).any():
        # abnormal and normal studies of the site: the rates the worklist should show
        prevalence = args.deployment_prevalence or None
        listed, flagged, critical_hits, ood, truth = sample
        rates = site_expected_rates(
            listed, flagged, critical_hits, ood, findings, truth, prevalence, str(args.site_labels)
        )
    else:
        rates = site_expected_rates(*hits, findings, source=", ".join(report["sources"]))
    checkpoint.expected_rates = {
        **{k: v for k, v in (checkpoint.expected_rates or {}).items() if k != "ood_threshold"},
        **rates,
    }
    report["expected_rates"] = rates
    checkpoint.metrics = {**checkpoint.metrics, "site_calibration": report}
    _print(report, findings, study_label)
    return report


def _hits(checkpoint, scored, findings):
    """(listed (N, F), flagged, critical, ood_scores or None) of scored images at the
    checkpoint's (new) thresholds: what the service would count for each."""
    names = list(checkpoint.label_names)
    probs = scored.probabilities  # float64, as triage compares (ScoredImages casts once)
    thresholds = np.array([checkpoint.threshold(n) for n in findings])
    listed = probs[:, [names.index(n) for n in findings]] >= thresholds
    flagged = np.asarray(checkpoint.study_flagged(scored.abnormal, np.any(listed, axis=1)), dtype=bool)
    critical = np.zeros(len(probs), dtype=bool)
    for name, t in checkpoint.critical.items():
        if name in names:
            critical |= probs[:, names.index(name)] >= float(t)
    reference = checkpoint.ood_reference()
    ood = None if reference is None or len(probs) == 0 else reference.scores(scored.features)
    return listed, flagged, critical, ood


def _labelled(checkpoint, args, normal_paths, findings, columns, study_label) -> tuple[dict[str, Any], Any]:
    """The labelled check, and the sample's hits and truth (None when nothing was readable)."""
    from xraytriage.cli.site_scoring import read_site_labels, score_images
    from xraytriage.evaluate.site_calibration import labelled_check

    labels = read_site_labels(args.site_labels, findings)
    used = {Path(p).resolve() for p in normal_paths}
    keep = [i for i, p in enumerate(labels.paths) if p.resolve() not in used]
    scored = score_images(checkpoint, [labels.paths[i] for i in keep], workers=args.workers)
    index = {str(p): i for i, p in zip(keep, [labels.paths[i] for i in keep], strict=True)}
    rows = [index[p] for p in scored.paths]
    check = labelled_check(
        labels.abnormal[rows], scored.probabilities[:, columns], abnormal_score=scored.abnormal,
        finding_truth={n: t[rows] for n, t in labels.findings.items()}, findings=findings,
        thresholds=checkpoint.thresholds, study_label=study_label,
    )  # fmt: skip
    check["left_out_used_for_calibration"] = len(labels.paths) - len(keep)
    check["unreadable"] = len(scored.errors)
    check["source"] = str(args.site_labels)
    if not rows:
        return check, None
    return check, (*_hits(checkpoint, scored, findings), labels.abnormal[rows])


def _print(report: dict[str, Any], findings: list[str], study_label: str | None) -> None:
    n = report["normal_images"]
    before = report["before"]
    print(f"site calibration on {n} normal images ({report['unreadable']} unreadable, left out):")
    print(f"  {'finding':<22}{'threshold':>10}{'was':>8}  normals listed")
    for name in findings:
        item = report["findings"][name]
        print(
            f"  {name:<22}{item['threshold']:>10.3f}{before['thresholds'][name]:>8.3f}  "
            f"{item['normals_listed']:>3} ({item['rate']:.1%})"
        )
    listed, flagged = report["any_finding"], report["flagged"]
    print(
        f"  expected on normal studies: any finding listed {listed['rate']:.1%} ({_ci(listed['rate_ci95'])}, "
        f"was {before['any_finding_rate']:.1%}); flagged {flagged['rate']:.1%} ({_ci(flagged['rate_ci95'])}, "
        f"was {before['flagged_rate']:.1%})"
    )
    if study_label:
        t = report["study_threshold"]["threshold"]
        print(f"  study flag: P(abnormal) >= {t:.3f} (was {before['thresholds'][study_label]:.3f})")
    else:
        print("  study flag: a study is flagged when a finding is listed (--flag-by findings)")
    check = report.get("labelled_check")
    if check:
        print(
            f"  labelled check ({check['abnormal_images']} abnormal, {check['normal_images']} normal; "
            f"{check['left_out_used_for_calibration']} calibration images left out):"
        )
        for key, text in (
            ("flagged_sensitivity", "abnormal flagged"),
            ("any_finding_sensitivity", "abnormal with a finding listed"),
            ("flagged_false_positive_rate", "normal flagged"),
            ("any_finding_false_positive_rate", "normal with a finding listed"),
        ):
            item = check[key]
            if item["n"]:
                print(
                    f"    {text:<32} {_pct(item['rate'])} ({item['hits']}/{item['n']}, {_ci(item['ci95'])})"
                )
        for name, item in check["findings"].items():
            print(
                f"    {name + ' found':<32} {_pct(item['rate'])} ({item['hits']}/{item['n']}, {_ci(item['ci95'])})"
            )
    for name, item in report.get("critical_raised", {}).items():
        print(
            f"  critical {name}: threshold raised {item['was']:.3f} -> {item['now']:.3f} "
            "(never below the finding's own threshold)"
        )
    rates = report.get("expected_rates")
    if rates:
        among = (
            "among normal studies (a floor: the worklist also holds abnormal ones)"
            if rates["population"] == "normal"
            else f"at {rates['prevalence']:.0%} abnormal (the labelled sample)"
        )
        ood = f", out of distribution {rates['ood']:.1%}" if "ood" in rates else ""
        print(
            f"  the service's drift monitor expects {among}: flagged {rates['flagged']:.1%}, "
            f"critical {rates['critical']:.1%}{ood}"
        )
    for line in report["warnings"]:
        print(f"  warning: {line}")
