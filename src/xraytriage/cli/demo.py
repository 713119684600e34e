"""``xraytriage demo``: triage the bundled sample radiographs with the bundled default model."""

from __future__ import annotations

import argparse
from pathlib import Path

from xraytriage.cli.common import default_model_path


def samples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets" / "samples"


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
        "--output", "-o", type=Path, default=Path("xraytriage-demo"), help="folder for the worklist"
    )
    p.add_argument("--explain", action="store_true", help="also write heatmaps of the listed findings")
    add_triage_options(p, top_default=10)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xraytriage.cli.triage import execute
    from xraytriage.errors import XRayTriageError

    model = args.model or default_model_path()
    if not Path(model).is_file():
        raise XRayTriageError(
            f"the bundled default model is missing ({model}); train one with `xraytriage train` "
            "and pass it with --model, or reinstall xraytriage with its assets"
        )
    samples = samples_dir()
    if not samples.is_dir():
        raise XRayTriageError(f"the bundled sample images are missing ({samples})")
    args.model = Path(model)
    print(f"triaging the bundled samples in {samples}")
    return execute([str(samples)], args.output, args, explain=args.explain)
