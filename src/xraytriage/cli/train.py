"""``xraytriage train`` and ``xraytriage cv``: train from a YAML config (see docs/training.md).

Multi-GPU / multi-node: launch the same command under ``torchrun``, e.g.
``torchrun --nproc_per_node=8 $(which xraytriage) train configs/nih-densenet121-chexnet.yaml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="YAML training config (see configs/ and docs/training.md)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-4 epochs=3 (repeatable)",
    )
    p.add_argument("--output", type=Path, default=None, help="run directory (default: runs/<name>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --output from its last completed epoch",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a classifier from a YAML config",
        description="Train one network (or one per label for binary relevance) from a YAML config; "
        "the run directory gets best.pt/last.pt checkpoints that triage can serve alone.",
    )
    _add_common(p)
    p.set_defaults(handler=run_train)

    p = subparsers.add_parser(
        "cv",
        help="patient-grouped k-fold cross-validation",
        description="Train one run per patient-grouped fold into RUN/fold-<k>; report mean ± std per "
        "metric and per epoch, and write out-of-fold predictions for every image.",
    )
    _add_common(p)
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument(
        "--group-by",
        default="collection",
        help="also report out-of-fold AUC within each value of this dataset column (default "
        "collection; 'none' to skip)",
    )
    p.set_defaults(handler=run_cv)


def _config(args: argparse.Namespace):
    from xraytriage.train.config import load_config

    overrides = [item for group in args.overrides for item in group]
    return load_config(args.config, overrides)


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def run_train(args: argparse.Namespace) -> int:
    config = _config(args)
    from xraytriage.train.run import format_results, run_training

    output = args.output or Path("runs") / config.name
    results = run_training(config, output, resume=args.resume)
    if _is_main():
        print(format_results(results))
    return 0


def run_cv(args: argparse.Namespace) -> int:
    from xraytriage.errors import ConfigError

    if args.folds < 2:
        raise ConfigError(f"--folds must be >= 2, got {args.folds}")
    config = _config(args)
    from xraytriage.train.cv import format_cv
    from xraytriage.train.cv import run_cv as cross_validate

    output = args.output or Path("runs") / f"{config.name}-cv"
    group_by = None if args.group_by in ("", "none") else args.group_by
    summary = cross_validate(config, output, folds=args.folds, resume=args.resume, group_by=group_by)
    if _is_main():
        print(format_cv(summary))
        print(f"out-of-fold predictions: {output / 'oof_predictions.csv'}")
    return 0
