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

At a new site (docs/deploying.md), ``--site-normals DIR...`` sets the thresholds from the
site's own reported-normal studies instead (no predictions CSV needed): each finding fires on
at most --finding-rate of them, any finding on at most --any-finding-rate, the study flag on
at most --flag-rate (a study is flagged when a finding is listed; --flag-by abnormal keeps
the P(abnormal) threshold); ``--site-labels CSV`` checks the result on a labelled sample. The model's
ranking and probabilities are kept; a NEW checkpoint is written (the input stays as it is).

``--ood-reference DIR...`` stores the out-of-distribution reference (the training images'
feature statistics; ``ood_score`` >= 1 is warned about) and ``--age-range MIN-MAX`` the
training ages (a DICOM PatientAge outside them is warned about).

This module is the one entry point (the options and the order of the steps); each mode is its
own module: ``calibrate_predictions``, ``calibrate_site`` (with ``site_scoring``) and
``calibrate_scope`` (the OOD reference and the age range).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xraytriage.cli.common import resolve_model_path
from xraytriage.evaluate.site_calibration import DEFAULT_ANY_RATE, DEFAULT_FINDING_RATE, DEFAULT_FLAG_RATE
from xraytriage.models.ood import DEFAULT_PERCENTILE


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="set a checkpoint's thresholds from held-out predictions or a site's normal studies; "
        "store its OOD reference and age range",
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
        "--predictions", type=Path, default=None, help="held-out predictions CSV (prob_<label> + truth)"
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
        "ChestX-ray14 population; 0 keeps the calibration set's own prevalence); with "
        "--site-labels, the mix of the expected flag rates the drift monitor checks",
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
    site = p.add_argument_group("site calibration (docs/deploying.md)")
    site.add_argument(
        "--site-normals",
        nargs="+",
        type=Path,
        default=None,
        metavar="DIR",
        help="folders/files of the site's reported-normal studies (PNG/JPEG/DICOM, ~100-300): "
        "thresholds are set on them",
    )
    site.add_argument(
        "--site-labels",
        type=Path,
        default=None,
        metavar="CSV",
        help="labelled sample to check the new thresholds on: 'file' + 'label' (normal/abnormal "
        "or a finding name), or one 0/1 column per finding; reports sensitivity with 95%% CIs "
        "and gives the drift monitor the site's expected rates (without it: rates among normals)",
    )
    site.add_argument(
        "--finding-rate",
        type=float,
        default=DEFAULT_FINDING_RATE,
        metavar="RATE",
        help=f"each finding fires on at most RATE of the normals (default {DEFAULT_FINDING_RATE})",
    )
    site.add_argument(
        "--any-finding-rate",
        type=float,
        default=DEFAULT_ANY_RATE,
        metavar="RATE",
        help=f"at most RATE of the normals list any finding (default {DEFAULT_ANY_RATE})",
    )
    site.add_argument(
        "--flag-rate",
        type=float,
        default=DEFAULT_FLAG_RATE,
        metavar="RATE",
        help=f"at most RATE of the normals are flagged (default {DEFAULT_FLAG_RATE})",
    )
    site.add_argument(
        "--flag-by",
        choices=("findings", "abnormal"),
        default="findings",
        help="what flags a study after site calibration: a listed finding (default: every flag "
        "names its finding; separates better at a new site, docs/deploying.md) or P(abnormal) at "
        "its own threshold (the model's rule)",
    )
    site.add_argument("--workers", type=int, default=1, help="decoder processes (0: decode in this process)")
    scope = p.add_argument_group("out-of-distribution reference and scope")
    scope.add_argument(
        "--ood-reference",
        nargs="+",
        type=Path,
        default=None,
        metavar="DIR",
        help="the model's training images: their feature statistics become the OOD reference",
    )
    scope.add_argument(
        "--ood-percentile",
        type=float,
        default=DEFAULT_PERCENTILE,
        help=f"warn above this percentile of the training images' distances (default {DEFAULT_PERCENTILE:g})",
    )
    scope.add_argument(
        "--age-range",
        default=None,
        metavar="MIN-MAX",
        help="patient ages in years the model was trained on, e.g. 9-89 "
        "(scripts/training_age_range.py computes it); other ages are warned about",
    )
    p.add_argument("--output", type=Path, required=True, help="calibrated checkpoint to write")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xraytriage.errors import ConfigError
    from xraytriage.models import load_checkpoint

    if not (args.predictions or args.site_normals or args.ood_reference or args.age_range):
        raise ConfigError(
            "calibrate needs --predictions, --site-normals, --ood-reference or --age-range (see --help)"
        )
    if args.site_labels and not args.site_normals:
        raise ConfigError("--site-labels checks a site calibration: give --site-normals too")
    from xraytriage.cli.calibrate_predictions import run_predictions
    from xraytriage.cli.calibrate_scope import run_ood_reference, set_age_range

    source = resolve_model_path(args.model)
    checkpoint = run_predictions(args) if args.predictions else load_checkpoint(source)
    report: dict = {"model": str(source), "output": str(args.output)}
    if args.age_range:
        set_age_range(checkpoint, args.age_range)
        report["age_years"] = checkpoint.scope["age_years"]
        print(f"  training ages: {args.age_range} y (DICOM PatientAge outside is warned about)")
    if args.ood_reference:
        report["ood"] = run_ood_reference(checkpoint, args)
    if args.site_normals:
        from xraytriage.cli.calibrate_site import run_site_calibration

        report["site_calibration"] = run_site_calibration(checkpoint, args)
    checkpoint.save(args.output)
    if args.site_normals:  # the site's record of what was done (the OOD step only prints)
        from xraytriage.sanitize import write_json

        report_path = args.output.with_suffix(".calibration.json")
        write_json(report_path, report)
        print(f"wrote {args.output} (report: {report_path})")
    else:
        print(f"wrote {args.output}")
    return 0
