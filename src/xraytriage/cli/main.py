"""Entry point: ``xraytriage COMMAND ...``.

:data:`COMMANDS` lists the modules that add subcommands, in the order ``xraytriage --help``
shows them; each defines ``register(subparsers)``. Adding a command module is one line there.
A module imports heavy libraries only in its handlers, so ``xraytriage --help`` stays fast
(a test checks that building the parser loads no torch).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from xraytriage import __version__
from xraytriage.errors import XRayTriageError
from xraytriage.logconfig import configure_logging

COMMANDS: tuple[str, ...] = (
    "xraytriage.cli.backup",  # backup, restore
    "xraytriage.cli.calibrate",  # calibrate
    "xraytriage.cli.datasets",  # datasets inspect | cache
    "xraytriage.cli.demo",  # demo
    "xraytriage.cli.dicom",  # dicom-echo
    "xraytriage.cli.evaluate",  # evaluate, compare
    "xraytriage.cli.explain",  # explain, localize-eval
    "xraytriage.cli.export",  # export
    "xraytriage.cli.localiser",  # localiser pack | cv | train | attach
    "xraytriage.cli.models",  # models list | show | fetch
    "xraytriage.cli.serve",  # serve
    "xraytriage.cli.train",  # train, cv
    "xraytriage.cli.triage",  # triage
    "xraytriage.cli.weights",  # import-weights
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xraytriage",
        description="Train, evaluate, explain and deploy radiograph classifiers; triage worklists.",
    )
    parser.add_argument("--version", action="version", version=f"xraytriage {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = ["xraytriage", *(sys.argv[1:] if argv is None else argv)]  # for report headers
    configure_logging("debug" if args.verbose else "info")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except XRayTriageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
