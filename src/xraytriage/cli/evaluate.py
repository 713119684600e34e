r"""``xraytriage evaluate`` and ``xraytriage compare``.

    xraytriage evaluate --model run/best.pt --dataset nih --root ../shared/data/nih --output eval/
    xraytriage evaluate --model m.pt --dataset csv --csv labels.csv --val-fraction 0.3 \
        --calibrate temperature --save-checkpoint m.calibrated.pt --output eval/
    xraytriage evaluate --model m.pt --dataset nih --root ../shared/data/nih \
        --compare-preds ../shared/data/anchors/chexnet_reproduction_preds.csv --output eval/
    xraytriage evaluate --predictions oof.csv [--dataset nih --root ...] --output eval/
    xraytriage evaluate --model m.pt --dataset folder --root ../shared/data/pediatric \
        --patient-pattern '(person\d+|IM-\d+)' --output eval-pediatric/   # cross-dataset
    xraytriage compare runs/a runs/b runs/c --output compare/

Dataset flags are exactly those of ``xraytriage datasets inspect`` (``--root``, ``--csv``,
``--images``, ``--meta``, ...), passed to ``load_dataset``; the kind goes in ``--dataset``.
"""

from __future__ import annotations

import argparse
import inspect
import logging
from pathlib import Path
from typing import Any

from xraytriage.cli.common import check_output_dir, resolve_model_path
from xraytriage.sanitize import write_csv

log = logging.getLogger(__name__)


def _copy_dataset_flags(parser: argparse.ArgumentParser) -> None:
    """Re-declare every dataset flag of ``datasets inspect`` here, so the two commands can never
    drift apart (the kind itself is ``--dataset`` here, a positional there)."""
    from xraytriage.cli.datasets import add_dataset_arguments

    template = argparse.ArgumentParser(add_help=False)
    add_dataset_arguments(template)
    group = parser.add_argument_group("dataset options (as in `xraytriage datasets inspect`)")
    for action in template._actions:
        if not action.option_strings:
            continue
        accepted = inspect.signature(type(action).__init__).parameters
        kwargs = {
            key: getattr(action, key)
            for key in ("dest", "default", "help", "type", "choices", "metavar", "nargs", "const")
            if key in accepted and key != "option_strings"
        }
        group.add_argument(*action.option_strings, action=type(action), **kwargs)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="metrics with CIs, operating points, calibration, study level, triage simulation, report.html",
        description="Evaluate a checkpoint on a dataset (or saved predictions): metrics.json, metrics.csv, "
        "predictions.csv, PNG plots and a self-contained report.html in --output.",
    )
    source = parser.add_argument_group("what to evaluate")
    source.add_argument(
        "--model",
        metavar="MODEL",
        help="checkpoint (.pt), fetched published model NAME, or `default` to run over --dataset "
        "(default: the bundled model when --dataset is given without --predictions)",
    )
    source.add_argument(
        "--predictions",
        type=Path,
        help="evaluate saved predictions instead (CSV: image or path, prob_<label>, label_<label> or --dataset)",
    )
    source.add_argument(
        "--dataset", metavar="KIND", help="dataset kind: nih | chexpert | mura | fracatlas | csv | folder"
    )
    _copy_dataset_flags(parser)
    source.add_argument(
        "--exclude-training-images",
        action="store_true",
        help="leave out images the checkpoint lists among its training images (by file name); "
        "without it they are scored and the console and report warn how many there are",
    )
    source.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="score a seeded random sample of about N images (whole patients, --seed) for a quick "
        "check; the report header says it is a sample",
    )
    val = parser.add_argument_group("validation (operating points and calibration are chosen on it)")
    val.add_argument("--val-fraction", type=float, help="hold out this share of patients as validation")
    val.add_argument(
        "--val-split", metavar="NAME", help="validation = rows whose dataset `split` column is NAME"
    )
    val.add_argument("--calibrate", choices=("temperature", "platt"), help="fit calibration on validation")
    val.add_argument("--save-checkpoint", type=Path, metavar="OUT.pt", help="write the calibrated checkpoint")
    opts = parser.add_argument_group("metrics")
    opts.add_argument("--thresholds", default="0.4,0.5,0.6,0.7,0.8", help="fixed thresholds (comma list)")
    opts.add_argument(
        "--operating-point",
        default="youden",
        help="youden | f1 | sensitivity[:TARGET] | specificity[:TARGET] (default youden; targets default 0.9)",
    )
    opts.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N", help="bootstrap replicates (default 1000)"
    )
    opts.add_argument(
        "--group-by",
        choices=("collection", "view", "sex", "age-band"),
        help="also report every metric within these groups, their mean, and how well the group "
        "alone predicts each label (shortcut audit)",
    )
    opts.add_argument("--seed", type=int, default=0)
    opts.add_argument(
        "--critical", default="Pneumothorax", help="labels that make a study critical (comma list)"
    )
    opts.add_argument("--max-wait", type=float, default=60.0, help="escalation after N minutes (0: none)")
    opts.add_argument(
        "--reading-minutes", type=float, help="reading time per study (default: 90%% of the day)"
    )
    opts.add_argument("--reading-time", choices=("fixed", "exponential"), default="fixed")
    opts.add_argument("--no-simulation", action="store_true", help="skip the reading-queue simulation")
    extra = parser.add_argument_group("side by side and training curves")
    extra.add_argument("--compare-preds", type=Path, metavar="CSV", help="another model's predictions")
    extra.add_argument("--compare-name", default="other", help="name of that model in tables")
    extra.add_argument(
        "--localization",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="`xraytriage localize-eval` output folder(s) to include in the report",
    )
    extra.add_argument(
        "--run", type=Path, action="append", default=[], metavar="RUN_DIR", help="training run(s)"
    )
    run = parser.add_argument_group("inference")
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--device", default="cpu")
    run.add_argument("--workers", type=int, default=0, help="image decoding workers")
    run.add_argument("--cache", type=Path, metavar="DIR", help="uint8 image cache (`datasets cache`)")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR")
    parser.add_argument("--title", default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_evaluate)

    compare = subparsers.add_parser(
        "compare",
        help="compare training runs: labels x runs AUC table, curves, report.html",
        description="Side by side of several runs, from their per-epoch metrics CSV or an evaluation's "
        "metrics.json; runs evaluated on the same images are also compared by DeLong test.",
    )
    compare.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    compare.add_argument("--output", type=Path, required=True, metavar="DIR")
    compare.add_argument("--bootstrap", type=int, default=1000, metavar="N")
    compare.add_argument("--seed", type=int, default=0)
    compare.set_defaults(handler=run_compare)


# --- evaluate -----------------------------------------------------------------------------------
def _config(args: argparse.Namespace):
    from xraytriage.errors import ConfigError
    from xraytriage.evaluate.operating_points import parse_method
    from xraytriage.evaluate.pipeline import EvaluationConfig

    try:
        thresholds = tuple(float(t) for t in args.thresholds.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"--thresholds must be a comma list of numbers, got {args.thresholds!r}") from None
    method, target = parse_method(args.operating_point)
    if args.bootstrap < 1:
        raise ConfigError("--bootstrap must be at least 1")
    return EvaluationConfig(
        thresholds=thresholds,
        n_boot=args.bootstrap,
        seed=args.seed,
        operating_point=method,
        target_sensitivity=target if method == "sensitivity" else 0.9,
        target_specificity=target if method == "specificity" else 0.9,
        critical_labels=tuple(c.strip() for c in args.critical.split(",") if c.strip()),
        simulate=not args.no_simulation,
        reading_minutes=args.reading_minutes,
        reading_kind=args.reading_time,
        max_wait=args.max_wait or None,
        group_by=args.group_by,
    )


def _load_dataset(args: argparse.Namespace):
    from xraytriage.cli.datasets import dataset_options
    from xraytriage.data.registry import load_dataset

    return load_dataset(args.dataset, **dataset_options(args))


def _split_dataset(dataset, args: argparse.Namespace):
    """(evaluation part, validation part or None)."""
    import numpy as np

    from xraytriage.data.splits import train_val_test_split
    from xraytriage.errors import ConfigError

    if args.val_split:
        if "split" not in dataset.table.columns:
            raise ConfigError(f"--val-split {args.val_split}: the dataset has no `split` column")
        is_val = dataset.table["split"].astype(str).to_numpy() == args.val_split
        if not is_val.any():
            raise ConfigError(f"--val-split {args.val_split}: no row has that split")
        return dataset.subset(~is_val), dataset.subset(is_val)
    if args.val_fraction:
        if not 0 < args.val_fraction < 1:
            raise ConfigError("--val-fraction must be in (0, 1)")
        parts = train_val_test_split(dataset, val=args.val_fraction, test=0.0, seed=args.seed)
        return dataset.subset(parts["train"]), dataset.subset(parts.get("val", np.array([], int)))
    return dataset, None


def _split_frame(frame, args: argparse.Namespace):
    import numpy as np

    from xraytriage.data.splits import group_split
    from xraytriage.errors import ConfigError

    if args.val_split:
        if "split" not in frame.columns:
            raise ConfigError(f"--val-split {args.val_split}: the predictions have no `split` column")
        is_val = frame["split"].astype(str).to_numpy() == args.val_split
        return frame[~is_val].reset_index(drop=True), frame[is_val].reset_index(drop=True)
    if args.val_fraction:
        groups = frame["patient_id"] if "patient_id" in frame.columns else frame["image"]
        keys = (
            frame["abnormal"].fillna(-1).to_numpy() if "abnormal" in frame.columns else np.zeros(len(frame))
        )
        part = group_split(
            groups.astype(str).to_numpy(), keys, [1 - args.val_fraction, args.val_fraction], args.seed
        )
        return frame[part == 0].reset_index(drop=True), frame[part == 1].reset_index(drop=True)
    return frame, None


def _refresh_probabilities(frame, checkpoint):
    """Recompute prob_* and abnormal_probability from logit_* with (new) calibration."""
    from xraytriage.evaluate.predictions import LOGIT, PROB

    names = checkpoint.label_names
    probs = checkpoint.probabilities(frame[[LOGIT + n for n in names]].to_numpy())
    frame = frame.copy()
    for j, n in enumerate(names):
        frame[PROB + n] = probs[:, j].astype("float64")
    frame["abnormal_probability"] = checkpoint.abnormal_probability(probs)
    return frame


def sample_rows(patient_ids, n: int, seed: int):
    """Row indices of a seeded random sample of whole patients holding about ``n`` rows (the
    patients drawn until ``n`` is reached), in their original order."""
    import numpy as np

    from xraytriage.errors import ConfigError

    if n < 1:
        raise ConfigError("--sample must be at least 1")
    ids = np.asarray(patient_ids).astype(str)
    patients = np.unique(ids)
    np.random.default_rng(seed).shuffle(patients)
    sizes = {p: c for p, c in zip(*np.unique(ids, return_counts=True), strict=True)}
    chosen, total = set(), 0
    for patient in patients:
        if total >= n:
            break
        chosen.add(patient)
        total += sizes[patient]
    return np.flatnonzero(np.isin(ids, list(chosen)))


def _exclude_seen(dataset, checkpoint, args: argparse.Namespace):
    """(dataset without the checkpoint's training images when asked, how many were dropped)."""
    import numpy as np

    from xraytriage.errors import ConfigError

    if not args.exclude_training_images:
        return dataset, 0
    if not checkpoint.training_images:
        raise ConfigError(f"--exclude-training-images: {args.model} does not record its training images")
    paths = dataset.table["path"].astype(str)
    seen = paths.isin(set(checkpoint.seen_in_training(paths.tolist()))).to_numpy()
    if seen.all():
        raise ConfigError(
            f"--exclude-training-images: all {len(seen)} images of the dataset were used to train "
            f"{args.model}; nothing is left to evaluate"
        )
    if seen.any():
        print(
            f"excluded {int(seen.sum())} of {len(seen)} images the model was trained on (--exclude-training-images)"
        )
    else:
        print(f"--exclude-training-images: none of the {len(seen)} images was used to train the model")
    return dataset.subset(np.flatnonzero(~seen)), int(seen.sum())


def _from_model(args: argparse.Namespace, checkpoint):
    from xraytriage.evaluate.predictions import predict_dataset

    dataset = _load_dataset(args)
    if args.sample:
        dataset = dataset.subset(sample_rows(dataset.table["patient_id"], args.sample, args.seed))
    dataset, excluded = _exclude_seen(dataset, checkpoint, args)
    test_ds, val_ds = _split_dataset(dataset, args)
    cache = None
    if args.cache is not None:
        from xraytriage.data.cache import ImageCache

        cache = ImageCache(args.cache, checkpoint.preprocess)
    kwargs: dict[str, Any] = {
        "batch_size": args.batch_size,
        "cache": cache,
        "device": args.device,
        "num_workers": args.workers,
        "progress": not args.quiet,
    }
    test = predict_dataset(checkpoint, test_ds, **kwargs)
    val = predict_dataset(checkpoint, val_ds, **kwargs) if val_ds is not None else None
    errors = test.errors + (val.errors if val is not None else [])
    return test.frame, (val.frame if val is not None else None), errors, excluded


def _from_predictions(args: argparse.Namespace):
    from xraytriage.evaluate.predictions import attach_labels, read_predictions_csv

    frame = read_predictions_csv(args.predictions)
    if args.dataset:
        before = len(frame)
        frame = attach_labels(frame, _load_dataset(args))
        if len(frame) < before:
            log.warning("%d of %d predicted images are not in the dataset", before - len(frame), before)
    if "patient_id" not in frame.columns:
        log.warning("predictions have no patient_id: bootstrap resamples images, not patients")
    if args.sample:
        ids = frame["patient_id"] if "patient_id" in frame.columns else frame["image"]
        frame = frame.iloc[sample_rows(ids, args.sample, args.seed)].reset_index(drop=True)
    return _split_frame(frame, args)


def run_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from xraytriage.errors import ConfigError
    from xraytriage.evaluate.calibration import calibrate_checkpoint
    from xraytriage.evaluate.pipeline import evaluate_predictions, write_evaluation
    from xraytriage.evaluate.predictions import label_matrix

    check_output_dir(args.output)
    if args.model is not None and args.predictions is not None:
        raise ConfigError("give one of --model (with --dataset) or --predictions, not both")
    if args.predictions is None and not args.dataset:
        raise ConfigError(
            "give --dataset KIND and its options (the model is the bundled one unless --model says "
            "otherwise) or --predictions CSV"
        )
    if args.predictions is None:
        args.model = str(resolve_model_path(args.model))  # the one --model rule, checked before any work
    if args.calibrate and args.model is None:
        raise ConfigError("--calibrate needs --model (calibration is fitted on raw logits)")
    if args.save_checkpoint and not args.calibrate:
        raise ConfigError("--save-checkpoint writes the calibrated checkpoint: give --calibrate too")
    if args.calibrate and not (args.val_fraction or args.val_split):
        raise ConfigError("--calibrate needs a validation set: --val-fraction or --val-split")
    if args.exclude_training_images and args.model is None:
        raise ConfigError(
            "--exclude-training-images needs --model (the checkpoint lists its training images)"
        )
    cfg = _config(args)
    checkpoint, errors, excluded = None, [], 0
    if args.model is not None:
        from xraytriage.models.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(resolve_model_path(args.model))
        test, val, errors, excluded = _from_model(args, checkpoint)
    else:
        test, val = _from_predictions(args)
    overlap = None
    if checkpoint is not None:
        from xraytriage.evaluate.provenance import training_overlap

        overlap = training_overlap(test, checkpoint, excluded)
        _warn_overlap(overlap)
    if args.calibrate:
        names = checkpoint.label_names
        checkpoint = calibrate_checkpoint(
            checkpoint,
            y_true=label_matrix(val, names),
            y_score=val[["logit_" + n for n in names]].to_numpy(),
            method=args.calibrate,
            threshold_method=cfg.operating_point,
            target=cfg.target_specificity if cfg.operating_point == "specificity" else cfg.target_sensitivity,
        )
        test, val = _refresh_probabilities(test, checkpoint), _refresh_probabilities(val, checkpoint)
        target = args.save_checkpoint or args.output / "calibrated.pt"
        checkpoint.save(target)
        print(
            f"calibrated checkpoint ({args.calibrate}, thresholds: {cfg.operating_point}) saved to {target}"
        )
    comparison = None
    if args.compare_preds is not None:
        from xraytriage.evaluate.compare import compare_predictions
        from xraytriage.evaluate.predictions import read_predictions_csv

        comparison = compare_predictions(
            test,
            read_predictions_csv(args.compare_preds),
            args.bootstrap,
            args.seed,
            cfg.thresholds,
            names=("ours", args.compare_name),
        )
    result = evaluate_predictions(test, val, cfg, checkpoint.thresholds if checkpoint is not None else None)
    result["provenance"] = _provenance(args, test, checkpoint)
    if overlap is not None:
        result["training_overlap"] = overlap
    if comparison is not None and args.group_by:
        from xraytriage.evaluate.compare import compare_triage_by_group

        comparison["grouped_triage"] = compare_triage_by_group(
            comparison, args.group_by, ("ours", args.compare_name)
        )
    title = args.title or (
        f"Evaluation of {checkpoint.name if checkpoint is not None else args.predictions.name}"
        + (f" on {result['provenance']['dataset']}" if args.dataset else "")
    )
    paths = write_evaluation(result, args.output, test, title, args.run, comparison, args.localization)
    if errors:
        write_csv(pd.DataFrame(errors), args.output / "errors.csv", index=False)
        print(f"{len(errors)} image(s) could not be read; listed in {args.output / 'errors.csv'}")
    _print_summary(result, comparison)
    if overlap is not None:
        _warn_overlap(overlap)  # again below the table, where the numbers are read
    print(f"wrote {paths['metrics.json']}, {paths['metrics.csv']} and {paths['report.html']}")
    return 0


def _warn_overlap(overlap: dict[str, Any]) -> None:
    """Loud, on stderr and in the log: the model has seen some of these images."""
    from rich.console import Console

    from xraytriage.evaluate.provenance import overlap_warning

    line = overlap_warning(overlap)
    if line is None:
        return
    log.warning("%s", line)
    Console(stderr=True).print(f"[bold red]WARNING: {line}[/]", highlight=False, soft_wrap=True)


def _provenance(args: argparse.Namespace, test, checkpoint) -> dict[str, Any]:
    from xraytriage.evaluate.provenance import build_provenance

    dataset = None
    if args.dataset:
        where = next((str(v) for v in (args.root, args.csv, args.image_paths) if v), "")
        dataset = f"{args.dataset} {where}".strip()
    sample = f"seeded random sample (seed {args.seed}) of about {args.sample} images" if args.sample else None
    return build_provenance(
        test,
        checkpoint=checkpoint,
        checkpoint_path=Path(args.model) if args.model else None,
        predictions_path=args.predictions,
        model=args.predictions.name if args.predictions else None,
        dataset=dataset,
        group_by=args.group_by,
        sample=sample,
        argv=getattr(args, "command_line", None),
    )


def _print_summary(result: dict[str, Any], comparison) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v):
        return "–" if v is None or v != v else f"{v:.3f}"

    def interval(ci):
        return "–" if fmt(ci["low"]) == "–" else f"[{fmt(ci['low'])}, {fmt(ci['high'])}]"

    patients = result.get("patients")
    table = Table(
        title=f"{result['images']} images, "
        + (f"{patients} patients" if patients is not None else "patients not recorded")
    )
    for col in ("label", "n", "pos", "AUC", "95% CI", "AP", "ECE"):
        table.add_column(col, justify="left" if col == "label" else "right")
    labels = set(result["labels"])
    summary = result.summary_table()
    means = [n for n in summary.index if n not in labels and not str(n).startswith("micro")]
    for name, r in summary.loc[[*result["labels"], *means]].iterrows():  # labels, then the means
        if name in labels:
            cells = [str(int(r["n"])), str(int(r["positives"]))]
            auc = "no positives" if r["positives"] == 0 else fmt(r["auc"])
        else:
            cells, auc = ["", ""], fmt(r["auc"])
        table.add_row(
            name,
            *cells,
            auc,
            interval({"low": r["auc_low"], "high": r["auc_high"]}),
            fmt(r["average_precision"]),
            fmt(r["ece"]) if name in labels else "",
        )
    console = Console()
    console.print(table)
    for line in _clinical_warnings(result):
        console.print(f"[bold red]warning:[/] {line}", highlight=False)
    if "triage" in result:
        tri = result["triage"]
        console.print(
            f"triage: priority AUC {fmt(tri['priority_auc'])}; abnormal found in top "
            + ", ".join(f"{float(k):.0%}: {v:.0%}" for k, v in tri["abnormal_found_in_top"].items())
        )
    if comparison is not None:
        console.print(f"side by side on {comparison['images']} shared images: see comparison.csv")
    if "grouped" in result:
        _print_grouped(console, result["grouped"], comparison)


def _clinical_warnings(result: dict[str, Any]) -> list[str]:
    """The report's clinical warnings in one line each: a finding mostly missed at the model's
    threshold, or probabilities that are not chances (report.html has the CIs and the words)."""
    from xraytriage.evaluate.clinical import HIGH_ECE, LOW_SENSITIVITY

    rules = result.get("operating_points", {}).get("rules", {})
    rule = "checkpoint" if "checkpoint" in rules else result["config"]["operating_point"]
    lines = []
    for name in result["labels"]:
        at = rules.get(rule, {}).get(name, {})
        sensitivity, ece = at.get("sensitivity"), result.get("calibration", {}).get(name, {}).get("ece")
        if sensitivity is not None and sensitivity == sensitivity and sensitivity < LOW_SENSITIVITY:
            lines.append(
                f"{name}: at its threshold {at['threshold']:.2f} only {sensitivity:.0%} of the images with it "
                "are flagged (see the summary at the top of report.html)"
            )
        if ece is not None and ece == ece and ece > HIGH_ECE:
            lines.append(
                f"{name}: probabilities off by {ece:.2f} on average (ECE above {HIGH_ECE:g}): a ranking, not chances"
            )
    return lines


def _print_grouped(console, grouped: dict[str, Any], comparison) -> None:
    """The triage score within each group (and the other model's, when compared), then warnings."""
    from rich.table import Table

    by = grouped["by"]
    name = next((n for n in grouped["labels"] if n.startswith("triage")), None)
    if name is not None:
        r = grouped["labels"][name]
        other = (comparison or {}).get("grouped_triage")
        rows = {row["group"]: row for row in other["table"].to_dict("records")} if other else {}
        table = Table(title=f"triage AUC within each {by} (the honest number when {by}s differ)")
        for col in (by, "images", "abnormal", "AUC"):
            table.add_column(col, justify="left" if col == by else "right")
        if other:
            table.add_column(f"same images: ours / {other['names'][1]}", justify="right")
        for group, g in r["groups"].items():
            auc = "one class" if g["auc"] is None else f"{g['auc']:.3f}" + ("" if g["in_mean"] else " (few)")
            cells = [group, str(g["n"]), str(g["positives"]), auc]
            if other:
                o = rows.get(group, {})
                a, b = o.get(f"auc_{other['names'][0]}"), o.get(f"auc_{other['names'][1]}")
                cells.append("–" if a is None or a != a else f"{a:.3f} / {b:.3f} (n={o['n']})")
            table.add_row(*cells)
        mean = r["within_mean_auc"]
        cells = [f"mean within {by}", "", "", "–" if mean is None else f"{mean:.3f}"]
        if other:
            m = other["mean_within"]
            a, b = m.get(other["names"][0]), m.get(other["names"][1])
            cells.append("–" if a is None or b is None else f"{a:.3f} / {b:.3f}")
        table.add_row(*cells)
        table.add_row(
            "pooled",
            "",
            "",
            "–" if r["pooled_auc"] is None else f"{r['pooled_auc']:.3f}",
            *([""] if other else []),
        )
        console.print(table)
    for line in grouped["warnings"]:
        console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)


# --- compare ------------------------------------------------------------------------------------
def run_compare(args: argparse.Namespace) -> int:
    from xraytriage.evaluate.report import build_runs_report

    path = build_runs_report(
        args.runs,
        args.output,
        n_boot=args.bootstrap,
        seed=args.seed,
        command=getattr(args, "command_line", None),
    )
    print(f"wrote {path}")
    return 0
