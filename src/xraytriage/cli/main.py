"""Entry point. Subcommands are discovered from the modules of this package: each module that
defines ``register(subparsers)`` adds its commands, and its handler imports heavy libraries
only when run, so ``xraytriage --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from xraytriage import __version__
from xraytriage.errors import XRayTriageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xraytriage",
        description="Train, evaluate, explain and deploy radiograph classifiers; triage worklists.",
    )
    parser.add_argument("--version", action="version", version=f"xraytriage {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import xraytriage.cli as cli_pkg

    for info in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if info.name in ("main", "common"):
            continue
        module = importlib.import_module(f"xraytriage.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = ["xraytriage", *(sys.argv[1:] if argv is None else argv)]  # for report headers
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
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
