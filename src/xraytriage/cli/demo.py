"""``xraytriage demo``: triage the bundled sample radiographs with the bundled default model."""

from __future__ import annotations

import argparse
from pathlib import Path


def samples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets" / "samples"


def msk_samples_dir() -> Path:
    """FracAtlas hand/leg/shoulder/hip films for the routed demo (``demo --route``)."""
    return Path(__file__).resolve().parent.parent / "assets" / "samples-msk"


def register(subparsers: argparse._SubParsersAction) -> None:
    from xraytriage.cli.triage import add_triage_options

    p = subparsers.add_parser(
        "demo",
        help="triage the bundled sample radiographs with the bundled model",
        description=(
            "Triage the sample chest radiographs shipped with the package (NIH ChestX-ray14 PNGs and a "
            "SIIM DICOM) with the bundled default model; prints the worklist and where its files are."
        ),
    )
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        default=Path("out/demo"),
        help="folder for the worklist (default out/demo, as `make demo`)",
    )
    p.add_argument("--explain", action="store_true", help="also write heatmaps of the listed findings")
    p.add_argument(
        "--route",
        action="store_true",
        help="also triage the bundled musculoskeletal samples, each image routed by body part to the "
        "chest or the fracture model: one mixed worklist (docs/routing.md)",
    )
    add_triage_options(p, top_default=10)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xraytriage.cli.common import check_output_dir
    from xraytriage.cli.triage import execute
    from xraytriage.errors import XRayTriageError

    check_output_dir(args.output)
    samples = samples_dir()
    if not samples.is_dir():
        raise XRayTriageError(f"the bundled sample images are missing ({samples})")
    inputs = [str(samples), *([str(msk_samples_dir())] if args.route else [])]
    print(f"triaging the bundled samples in {', '.join(inputs)}")
    args.fracture_model = args.router = None
    code = execute(inputs, args.output, args, explain=args.explain)
    print_sample_truth(samples, args.output)
    return code


def print_sample_truth(samples: Path, output: Path) -> None:
    """The NIH labels of the samples next to their rank, so the worklist can be judged at a glance
    (text-mined report labels, not verified diagnoses)."""
    import csv
    import textwrap

    from xraytriage.triage.worklist import read_worklist_csv

    labels_csv, worklist = samples / "labels.csv", Path(output) / "worklist.csv"
    if not labels_csv.is_file() or not worklist.is_file():
        return
    with open(labels_csv, newline="", encoding="utf-8") as fh:
        truth = {row["file"]: row["finding_labels"].replace("|", ", ") for row in csv.DictReader(fh)}
    print("NIH labels of the samples, in worklist order (flag = the model's study flag):")
    for row in read_worklist_csv(worklist):
        name = Path(row["path"]).name
        if row["rank"] is not None:
            flag = "FLAGGED" if row["flagged"] else "-"
            labels = truth.get(name, "(not from NIH ChestX-ray14: no labels)")
            line = f"  {row['rank']:>2}  {flag:<7}  {row['abnormal']:.2f}  {name}  {labels}"
            print(textwrap.fill(line, 80, subsequent_indent=" " * 24, break_on_hyphens=False))
