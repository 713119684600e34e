"""``xraytriage datasets inspect|cache KIND ...``: look at a dataset, build its uint8 cache.

The same flags work for every kind and become the options of
:func:`xraytriage.data.registry.load_dataset` (a flag a kind does not take is an error that
lists the ones it does); ``--option KEY=VALUE`` passes anything else (values read as YAML).

    xraytriage datasets inspect nih --root ../shared/data/nih
    xraytriage datasets inspect nih --images ../shared/data/nih/images --meta ../shared/data/nih/meta --views PA
    xraytriage datasets inspect chexpert --csv train.csv --root data/ --uncertainty U-Ones --uncertainty Edema=U-Zeros
    xraytriage datasets inspect mura --root ../shared/data/mura --folds 5
    xraytriage datasets inspect fracatlas --root ../shared/data/msk/fracatlas --folds 3
    xraytriage datasets cache nih --root ../shared/data/nih --size 224 --output cache/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

KINDS = ("nih", "chexpert", "mura", "fracatlas", "csv", "folder")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("datasets", help="inspect datasets and build preprocessed caches")
    commands = parser.add_subparsers(dest="datasets_command", metavar="ACTION")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)

    inspect_parser = commands.add_parser(
        "inspect",
        help="counts per label, split, view; missing files; patients; label co-occurrence",
        description="Counts per label (positive/negative/uncertain/unknown), per split, per view, "
        "missing files, patients, studies and label co-occurrence.",
    )
    add_dataset_arguments(inspect_parser)
    split = inspect_parser.add_argument_group("splits (patient-grouped)")
    split.add_argument("--folds", type=int, default=None, help="k-fold: report each fold")
    split.add_argument("--val-fraction", type=float, default=None, help="train/val/test split (default 0.1)")
    split.add_argument("--test-fraction", type=float, default=None, help="train/val/test split (default 0.2)")
    split.add_argument("--seed", type=int, default=None, help="split seed (default 0)")
    split.add_argument("--stratify", default="rarest", choices=("rarest", "abnormal", "none"))
    inspect_parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also save as JSON")
    inspect_parser.add_argument(
        "--skip-file-check", action="store_true", help="do not check that listed files exist"
    )
    inspect_parser.add_argument(
        "--wide", action="store_true", help="each table whole (default: wide tables split to fit 80 columns)"
    )
    inspect_parser.set_defaults(handler=run_inspect)

    cache_parser = commands.add_parser(
        "cache",
        help="decode + resize every image once into a memory-mapped uint8 store",
        description="Build (or extend) the uint8 cache of a dataset for a preprocessing contract.",
    )
    add_dataset_arguments(cache_parser)
    cache_parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="cache folder")
    cache_parser.add_argument("--size", type=int, default=224)
    cache_parser.add_argument("--resize", default="squash", choices=("squash", "letterbox", "center_crop"))
    cache_parser.add_argument("--intensity", default="minmax", choices=("none", "minmax", "percentile"))
    cache_parser.add_argument("--workers", type=int, default=None, help="decoding processes (default 2)")
    cache_parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    cache_parser.set_defaults(handler=run_cache)


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="dataset kind")
    group = parser.add_argument_group("dataset options (each kind takes the ones it needs)")
    group.add_argument("--root", help="dataset folder (nih: finds images/, images-64/, fullres/, meta/)")
    group.add_argument("--images", action="append", help="nih: image folder (repeat for several)")
    group.add_argument("--meta", help="nih: folder with Data_Entry_2017*.csv[.gz] and BBox_List_2017*")
    group.add_argument("--data-entry", help="nih: the Data_Entry CSV")
    group.add_argument("--bbox", help="nih: the BBox_List CSV")
    group.add_argument("--split-file", action="append", help="nih: official split list (repeatable)")
    group.add_argument("--csv", help="chexpert/csv/fracatlas: the label CSV")
    group.add_argument("--views", help="comma list, e.g. PA,AP (nih), Frontal or AP,PA,Lateral (chexpert)")
    group.add_argument("--frontal-only", action="store_true", default=None, help="chexpert: frontal images")
    group.add_argument(
        "--uncertainty",
        action="append",
        metavar="POLICY|LABEL=POLICY",
        help="chexpert: U-Ignore, U-Zeros, U-Ones, U-MultiClass, U-Ones-LSR, U-Zeros-LSR (repeatable)",
    )
    group.add_argument(
        "--drop-uncertain", action="store_true", default=None, help="chexpert: drop images with any -1"
    )
    group.add_argument("--nrows", type=int, help="chexpert: read only the first N CSV rows")
    group.add_argument("--image-paths", help="mura: *_image_paths.csv")
    group.add_argument("--studies", help="mura: *_labeled_studies.csv")
    group.add_argument(
        "--body-parts", help="mura: comma list, e.g. XR_WRIST,XR_HAND; fracatlas: hand,leg,hip,shoulder"
    )
    group.add_argument("--patient-pattern", help="folder: regex whose first group is the patient id")
    group.add_argument("--labels", help="keep these labels (comma list); csv: the label columns")
    group.add_argument("--abnormal", action="store_true", default=None, help="add the derived Abnormal label")
    group.add_argument(
        "-O",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other option (YAML value)",
    )


def _uncertainty(values: list[str] | None) -> str | dict[str, str] | None:
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    policies: dict[str, str] = {}
    for value in values:
        label, _, policy = value.rpartition("=")
        policies[label.strip() or "default"] = policy.strip()
    return policies


def dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``load_dataset`` options the flags describe (flags not given are left out)."""
    import yaml

    from xraytriage.errors import ConfigError

    split_file = args.split_file[0] if args.split_file and len(args.split_file) == 1 else args.split_file
    options = {
        "root": args.root,
        "images": args.images,
        "meta": args.meta,
        "data_entry": args.data_entry,
        "bbox": args.bbox,
        "split_file": split_file,
        "csv": args.csv,
        "views": args.views,
        "frontal_only": args.frontal_only,
        "uncertainty": _uncertainty(args.uncertainty),
        "drop_uncertain": args.drop_uncertain,
        "nrows": args.nrows,
        "image_paths": args.image_paths,
        "studies": args.studies,
        "body_parts": args.body_parts,
        "patient_pattern": args.patient_pattern,
        "labels": args.labels,
        "abnormal": args.abnormal,
    }
    options = {k: v for k, v in options.items() if v is not None}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option expects KEY=VALUE, got {item!r}")
        options[key.strip().replace("-", "_")] = yaml.safe_load(value)
    kind = getattr(args, "kind", None) or getattr(args, "dataset", None)
    if kind:
        check_flags_for_kind(
            kind, options, given_as_option={i.partition("=")[0].strip() for i in args.option}
        )
    return options


def check_flags_for_kind(kind: str, options: dict[str, Any], given_as_option: set[str] = frozenset()) -> None:
    """Flags that dataset ``kind`` does not take: an error naming them as typed (``--csv``, not
    the loader's ``csv``), the flags it does take, and for a label CSV the ``csv`` kind."""
    from xraytriage.data.registry import COMMON_OPTIONS, _kind
    from xraytriage.data.registry import dataset_options as accepted
    from xraytriage.errors import ConfigError

    key = _kind(kind)
    allowed = accepted(key)

    def flag(name: str) -> str:
        return f"-O {name}=..." if name in given_as_option else "--" + name.replace("_", "-")

    unknown = [k for k in options if k not in allowed]
    if not unknown:
        return
    takes = ", ".join("--" + n.replace("_", "-") for n in allowed if n not in COMMON_OPTIONS)
    hint = ""
    if key != "csv" and "csv" in unknown:
        hint = (
            "; for a label CSV of your own (a path column and one column per label) use the csv kind: "
            "--dataset csv --csv FILE (`xraytriage datasets inspect csv --csv FILE` to check it first)"
        )
    raise ConfigError(
        f"dataset kind {key!r} does not take {', '.join(flag(k) for k in unknown)}; it takes {takes}{hint}"
    )


# --- inspect -----------------------------------------------------------------------------------
def count_missing_files(dataset) -> dict[str, Any]:
    """Listed-but-absent images: the dataset's own count (NIH) or a check of every path."""
    import os

    if hasattr(dataset, "missing") and hasattr(dataset, "listed"):
        return {"listed": int(dataset.listed), "missing": int(dataset.missing)}
    missing = sum(1 for p in dataset.paths if not os.path.isfile(p))
    return {"listed": len(dataset), "missing": missing}


def split_summary(dataset, splits: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    out = {}
    for name, idx in splits.items():
        idx = np.asarray(idx, dtype=np.int64)
        labels = dataset.labels[idx]
        out[str(name)] = {
            "images": len(idx),
            "patients": len(set(dataset.patient_ids[idx])),
            "positive": {n: int((labels[:, j] == 1).sum()) for j, n in enumerate(dataset.label_names)},
        }
    return out


def co_occurrence(dataset) -> dict[str, dict[str, int]]:
    import numpy as np

    positive = (dataset.labels == 1).astype(np.int64)
    counts = positive.T @ positive
    names = dataset.label_names
    return {a: {b: int(counts[i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)}


def inspect_report(dataset, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from xraytriage.data.splits import assert_patient_disjoint, patient_kfold, train_val_test_split

    report = dataset.describe()
    for counts in report["labels"].values():
        counts.setdefault("uncertain", 0)
    if not args.skip_file_check:
        files = count_missing_files(dataset)
        report["listed"] = files["listed"]
        report["missing_files"] = files["missing"]
        if hasattr(dataset, "unreadable_files"):  # FracAtlas: truncated JPEGs as released
            report["unreadable_files"] = dataset.unreadable_files()
    seed = 0 if args.seed is None else args.seed
    splits: dict[str, Any] | None = None
    if args.folds is not None:
        folds = patient_kfold(dataset, args.folds, seed=seed, stratify=args.stratify)
        splits = {f"fold {k}": np.flatnonzero(folds == k) for k in range(args.folds)}
        report["split_method"] = f"{args.folds}-fold, patient-grouped, stratify={args.stratify}, seed={seed}"
    elif args.val_fraction is not None or args.test_fraction is not None or args.seed is not None:
        val = 0.1 if args.val_fraction is None else args.val_fraction
        test = 0.2 if args.test_fraction is None else args.test_fraction
        splits = train_val_test_split(dataset, val=val, test=test, seed=seed, stratify=args.stratify)
        report["split_method"] = (
            f"val={val}, test={test}, patient-grouped, stratify={args.stratify}, seed={seed}"
        )
    elif "split" in dataset.table.columns and dataset.table["split"].astype(str).str.len().gt(0).any():
        column = dataset.table["split"].astype(str)
        splits = {name: np.flatnonzero(column.to_numpy() == name) for name in sorted(column.unique())}
        report["split_method"] = "the dataset's own split column"
    if splits is not None:
        if args.folds is not None or "split column" not in report["split_method"]:
            assert_patient_disjoint(splits, dataset.patient_ids)  # our splits never leak; prove it
        report["splits"] = split_summary(dataset, splits)
    report["co_occurrence"] = co_occurrence(dataset)
    return report


def _count_table(title: str, column: str, counts: dict) -> Table:
    """A two-column table of image counts per value (views, body parts)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column(column)
    table.add_column("images", justify="right")
    for value, n in counts.items():
        table.add_row(str(value), f"{n:,}")
    return table


def _collection_table(console, collections: dict[str, dict[str, Any]], labels: list[str], wide: bool) -> None:
    """Prevalence per collection: collections differ in selection, so their label mix differs."""
    from xraytriage.cli.common import print_table

    headers = ["label", *(f"{name}\n{c['images']:,} img" for name, c in collections.items())]
    rows = [
        ["abnormal", *(_share(c["abnormal"], c["images"]) for c in collections.values())],
        ["normal", *(_share(c["normal"], c["images"]) for c in collections.values())],
        *(
            [label, *(_share(c["positives"].get(label, 0), c["images"]) for c in collections.values())]
            for label in labels
        ),
    ]
    print_table(console, "collections (positives, % of the collection's images)", headers, rows, wide=wide)


def _share(n: int, total: int) -> str:
    return f"{n:,} ({100 * n / max(total, 1):.0f}%)"


def print_report(report: dict[str, Any], wide: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from xraytriage.cli.common import print_table

    console = Console()
    summary = Table(title=f"{report['dataset']} dataset", show_header=False)
    for key in ("images", "patients", "studies", "listed", "missing_files", "excluded_by_view"):
        if key in report:
            summary.add_row(key.replace("_", " "), f"{report[key]:,}")
    for key in (
        "boxes",
        "images_with_boxes",
        "dropped_uncertain",
        "unlabelled_images",
        "unassigned_files",
        "hardware",
        "multiscan_images",
        "multi_image_studies",
    ):
        if key in report:
            summary.add_row(key.replace("_", " "), f"{report[key]:,}")
    if "policies" in report:
        summary.add_row("uncertainty", ", ".join(sorted(set(report["policies"].values()))))
    console.print(summary)

    labels = Table(title="labels")
    for col in ("label", "positive", "negative", "uncertain", "unknown", "other"):
        labels.add_column(col, justify="left" if col == "label" else "right", no_wrap=True)
    for name, c in report["labels"].items():
        labels.add_row(
            name, *(f"{c.get(k, 0):,}" for k in ("positive", "negative", "uncertain", "unknown", "other"))
        )
    console.print(labels)

    console.print(_count_table("views", "view", report["views"]))
    if len(report.get("collections", {})) > 1:
        _collection_table(console, report["collections"], list(report["labels"]), wide)
    for line in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=wide)
    if "body_parts" in report:
        console.print(_count_table("body parts", "body part", report["body_parts"]))
    _print_fracatlas_extras(console, report)

    if "splits" in report:
        splits = report["splits"]
        rows = [
            ["images", *(f"{s['images']:,}" for s in splits.values())],
            ["patients", *(f"{s['patients']:,}" for s in splits.values())],
        ]
        for label in report["labels"]:
            cells = []
            for s in splits.values():
                n = s["positive"][label]
                cells.append(f"{n:,} ({100 * n / max(s['images'], 1):.1f}%)")
            rows.append([f"{label} +", *cells])
        print_table(console, f"splits ({report['split_method']})", ["", *splits], rows, wide=wide)

    names = list(report["co_occurrence"])
    if len(names) > 1:
        rows = [
            [str(k + 1), a, *(f"{report['co_occurrence'][a][b]:,}" for b in names)]
            for k, a in enumerate(names)
        ]
        print_table(
            console,
            "label co-occurrence (images positive for both; columns numbered as rows)",
            ["#", "label", *(str(k + 1) for k in range(len(names)))],
            rows,
            keys=2,
            wide=wide,
        )


def _print_fracatlas_extras(console, report: dict[str, Any]) -> None:
    """Resolution kinds, box/label disagreements and the files no decoder reads (FracAtlas)."""
    from rich.table import Table

    if "resolution_kinds" in report:
        table = Table(title="resolution kinds (evaluate within each)")
        for col in ("kind", "images", "fractured", "groups"):
            table.add_column(col, justify="left" if col == "kind" else "right")
        for kind, c in report["resolution_kinds"].items():
            table.add_row(kind, f"{c['images']:,}", _share(c["fractured"], c["images"]), f"{c['groups']:,}")
        console.print(table)
    if report.get("box_label_disagreements"):
        names = ", ".join(report["box_label_disagreements"])
        console.print(
            f"[yellow]box vs label:[/] {names} (a fracture box but not labelled fractured, or the reverse)"
        )
    unreadable = report.get("unreadable_files")
    if unreadable:
        console.print(
            f"[yellow]unreadable files:[/] {len(unreadable)} (skipped by cache, training and evaluation)"
        )
        for name, problem in unreadable.items():
            console.print(f"  {name}: {problem}", highlight=False, soft_wrap=True)


def run_inspect(args: argparse.Namespace) -> int:
    from xraytriage.data.registry import load_dataset

    dataset = load_dataset(args.kind, **dataset_options(args))
    report = inspect_report(dataset, args)
    print_report(report, wide=args.wide)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"saved {args.json}")
    return 0


# --- cache -------------------------------------------------------------------------------------
def run_cache(args: argparse.Namespace) -> int:
    from xraytriage.data.cache import ImageCache
    from xraytriage.data.registry import load_dataset
    from xraytriage.preprocess import PreprocessContract

    dataset = load_dataset(args.kind, **dataset_options(args))
    paths = dataset.paths[: args.limit] if args.limit is not None else dataset.paths
    contract = PreprocessContract(size=args.size, resize=args.resize, intensity=args.intensity)
    cache = ImageCache(args.output, contract)
    report = cache.build(paths, workers=args.workers, progress=True)
    print(f"{report}")
    print(f"cache: {cache.directory} ({len(cache)} images of {contract.size}x{contract.size})")
    for error in list(report.errors.values())[:10]:
        print(f"  failed: {error}")
    if report.failed > 10:
        print(f"  ... and {report.failed - 10} more (see {cache.index_file})")
    return 0 if report.failed < report.requested or report.requested == 0 else 1
