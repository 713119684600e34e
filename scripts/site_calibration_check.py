"""Issue 22's "done when" measurement: site calibration on one half of a site, checked on the other.

The pediatric folder (../shared/data/pediatric: children 1-5, one hospital in Guangzhou, AP
films) plays the new site. Its patients are split in two halves at random (patient-grouped:
no child in both); ``calibrate --site-normals`` is fitted on one half's NORMAL images and the
rates are counted on the OTHER half's images, which the calibration never saw:

    normal children with any finding listed, with Pneumothorax listed, flagged
    pneumonia children flagged, with some finding listed

next to the same rates at the model's own (NIH) thresholds. Repeated over ``--splits`` random
splits (both directions each), because one half of 200 normals is a small sample. Each
image is scored once; the thresholds are set by the same function the CLI uses
(``evaluate.site_calibration.site_thresholds``; tests/test_site_calibration.py also runs the
CLI itself on a half).

With ``--nih DIR`` it also measures the out-of-distribution score: AUROC of ``ood_score``
pediatric vs NIH, and the share of each warned (ood_score >= 1). The bundled model was trained
on every NIH image here, so the NIH share is on training images (the warning line is their
99th percentile); ``--holdout-model FOLD.pt`` adds held-out NIH images: the OOD reference is
refitted on that fold model's own training images and the NIH images it did not see are scored.

    PYTHONPATH=src python scripts/site_calibration_check.py [--model CKPT] \\
        [--nih ../shared/data/nih] [--holdout-model runs/cv/fold-1/best.pt] [--output check.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from xraytriage.cli.common import resolve_model_path
from xraytriage.cli.site_scoring import score_images
from xraytriage.evaluate.site_calibration import (
    DEFAULT_ANY_RATE,
    DEFAULT_FINDING_RATE,
    DEFAULT_FLAG_RATE,
    site_thresholds,
)
from xraytriage.labels import ABNORMAL
from xraytriage.models import load_checkpoint
from xraytriage.models.ood import fit_reference
from xraytriage.stats import roc_auc

TARGETS = {
    "normal_any_finding": ("<=", 0.15),
    "normal_pneumothorax": ("<=", 0.02),
    "normal_flagged": ("<=", 0.15),
    "pneumonia_flagged": (">=", 0.60),
    "pneumonia_any_finding": (">=", 0.70),
}


def half_split(patients: np.ndarray, seed: int) -> np.ndarray:
    """True for the images whose patient falls in the first half (random, patient-grouped)."""
    unique = np.array(sorted(set(patients)))
    chosen = set(np.random.default_rng(seed).permutation(unique)[: len(unique) // 2])
    return np.array([p in chosen for p in patients])


def rates(checkpoint, probs, abnormal, is_normal, thresholds, flag_by: str) -> dict[str, float]:
    """The five rates of the issue's target on a set of scored images, with ``thresholds``;
    ``flag_by``: "findings" (a listed finding flags: site calibration's default) or "abnormal"
    (P(abnormal) at or above the Abnormal threshold: the model's own rule)."""
    findings = list(checkpoint.findings)
    cols = [checkpoint.label_names.index(n) for n in findings]
    t = np.array([thresholds[n] for n in findings])
    listed = np.any(probs[:, cols] >= t, axis=1)
    flagged = listed if flag_by == "findings" else abnormal >= thresholds[ABNORMAL]
    ptx = probs[:, checkpoint.label_names.index("Pneumothorax")] >= thresholds["Pneumothorax"]
    normal, pneumonia = is_normal, ~is_normal
    return {
        "normal_any_finding": float(listed[normal].mean()),
        "normal_pneumothorax": float(ptx[normal].mean()),
        "normal_flagged": float(flagged[normal].mean()),
        "pneumonia_flagged": float(flagged[pneumonia].mean()),
        "pneumonia_any_finding": float(listed[pneumonia].mean()),
        "normal_images": int(normal.sum()),
        "pneumonia_images": int(pneumonia.sum()),
    }


def site_check(checkpoint, scored, table: pd.DataFrame, splits: int, rate_args: dict) -> dict:
    """Calibrate on one half's normals, count on the other half; ``splits`` random splits x 2.
    ``held_out``: the CLI's default (--flag-by findings); ``held_out_flag_by_abnormal``: the
    same with --flag-by abnormal; ``uncalibrated``: the model's own thresholds."""
    findings = list(checkpoint.findings)
    cols = [checkpoint.label_names.index(n) for n in findings]
    by_path = {str(Path(p).resolve()): i for i, p in enumerate(scored.paths)}
    rows = np.array([by_path[str(p.resolve())] for p in table["path"]])
    probs, abnormal = scored.probabilities[rows], scored.abnormal[rows]
    is_normal = table["label"].str.upper().eq("NORMAL").to_numpy()
    own = {n: checkpoint.threshold(n) for n in checkpoint.label_names}
    own_rule = "abnormal" if checkpoint.study_flag_threshold is not None else "findings"
    runs = []
    for seed in range(splits):
        first = half_split(table["patient"].to_numpy(), seed)
        for fit in (first, ~first):
            fit_normals, held = fit & is_normal, ~fit
            run = {"seed": seed, "calibration_normals": int(fit_normals.sum())}
            for key, study_label in (("held_out", None), ("held_out_flag_by_abnormal", ABNORMAL)):
                if study_label and own_rule != "abnormal":
                    continue
                result = site_thresholds(
                    probs[fit_normals][:, cols], abnormal[fit_normals], findings, study_label, **rate_args
                )
                rule = "abnormal" if study_label else "findings"
                t = {**own, **result.thresholds}
                run[key] = rates(checkpoint, probs[held], abnormal[held], is_normal[held], t, rule)
            run["uncalibrated"] = rates(
                checkpoint, probs[held], abnormal[held], is_normal[held], own, own_rule
            )
            runs.append(run)
    keys = list(TARGETS)
    kinds = [k for k in ("held_out", "held_out_flag_by_abnormal", "uncalibrated") if k in runs[0]]
    summary = {kind: {k: float(np.mean([r[kind][k] for r in runs])) for k in keys} for kind in kinds}
    summary["held_out_worst"] = {
        k: float((max if TARGETS[k][0] == "<=" else min)(r["held_out"][k] for r in runs)) for k in keys
    }
    return {"runs": runs, "summary": summary, "rates": rate_args}


def ood_check(checkpoint, pediatric_scores: np.ndarray, nih_scores: np.ndarray, note: str) -> dict:
    y = np.r_[np.ones(len(pediatric_scores)), np.zeros(len(nih_scores))]
    return {
        "auroc_pediatric_vs_nih": float(roc_auc(y, np.r_[pediatric_scores, nih_scores])),
        "nih_warned": float(np.mean(nih_scores >= 1)),
        "pediatric_warned": float(np.mean(pediatric_scores >= 1)),
        "nih_images": len(nih_scores),
        "pediatric_images": len(pediatric_scores),
        "nih_images_are": note,
    }


def holdout_ood(fold_path: Path, pediatric_dir: Path, nih_dir: Path) -> dict:
    """OOD measured with a fold model: reference on its training images, NIH images it never saw."""
    fold = load_checkpoint(fold_path)
    nih = score_images(fold, [nih_dir])
    seen = set(fold.seen_in_training(nih.paths))
    train = np.array([p in seen for p in nih.paths])
    reference = fit_reference(nih.features[train], source=f"{fold_path} training images")
    pediatric = score_images(fold, [pediatric_dir])
    return ood_check(
        fold,
        reference.scores(pediatric.features),
        reference.scores(nih.features[~train]),
        f"held out: the {int((~train).sum())} NIH images {fold_path} was not trained on "
        f"(reference fitted on its {int(train.sum())} training images)",
    )


def _print(report: dict) -> None:
    site = report["site"]["summary"]
    print(f"site calibration, {len(report['site']['runs'])} patient-split halves (mean; worst half):")
    by_abnormal = site.get("held_out_flag_by_abnormal")
    print(
        f"  {'rate':<24}{'target':>8}{'NIH thresholds':>16}{'site-calibrated':>17}{'worst':>8}"
        + (f"{'--flag-by abnormal':>20}" if by_abnormal else "")
    )
    for key, (op, target) in TARGETS.items():
        print(
            f"  {key:<24}{op + f'{target:.0%}':>8}{site['uncalibrated'][key]:>16.1%}"
            f"{site['held_out'][key]:>17.1%}{site['held_out_worst'][key]:>8.1%}"
            + (f"{by_abnormal[key]:>20.1%}" if by_abnormal else "")
        )
    for name in ("ood", "ood_holdout"):
        if name in report:
            o = report[name]
            print(
                f"{name}: AUROC pediatric vs NIH {o['auroc_pediatric_vs_nih']:.3f}; warned: NIH "
                f"{o['nih_warned']:.1%} of {o['nih_images']} ({o['nih_images_are']}), pediatric "
                f"{o['pediatric_warned']:.1%} of {o['pediatric_images']}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--pediatric", type=Path, default=Path("../shared/data/pediatric"))
    parser.add_argument("--nih", type=Path, default=None, help="NIH image folder for the OOD measurement")
    parser.add_argument(
        "--holdout-model", type=Path, default=None, help="a CV fold checkpoint (held-out OOD)"
    )
    parser.add_argument("--splits", type=int, default=5, help="random patient splits (each used both ways)")
    parser.add_argument("--finding-rate", type=float, default=DEFAULT_FINDING_RATE)
    parser.add_argument("--any-finding-rate", type=float, default=DEFAULT_ANY_RATE)
    parser.add_argument("--flag-rate", type=float, default=DEFAULT_FLAG_RATE)
    parser.add_argument("--output", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args(argv)
    checkpoint = load_checkpoint(resolve_model_path(args.model))
    table = pd.read_csv(args.pediatric / "labels.csv")
    table["path"] = [args.pediatric / f for f in table["file"]]
    scored = score_images(checkpoint, [args.pediatric])
    rate_args = {
        "finding_rate": args.finding_rate,
        "any_rate": args.any_finding_rate,
        "flag_rate": args.flag_rate,
    }
    report: dict = {
        "model": str(resolve_model_path(args.model)),
        "site": site_check(checkpoint, scored, table, args.splits, rate_args),
    }
    reference = checkpoint.ood_reference()
    if args.nih and reference is not None:
        nih = score_images(checkpoint, [args.nih])
        seen = len(checkpoint.seen_in_training(nih.paths))
        report["ood"] = ood_check(
            checkpoint, reference.scores(scored.features), reference.scores(nih.features),
            f"{seen} of {len(nih.paths)} are the model's training images",
        )  # fmt: skip
    if args.holdout_model:
        report["ood_holdout"] = holdout_ood(
            args.holdout_model, args.pediatric, args.nih or Path("../shared/data/nih")
        )
    _print(report)
    if args.output:
        args.output.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
