"""``xraytriage dicom-echo``: check that a PACS (the results destination) answers C-ECHO."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dicom-echo",
        help="C-ECHO a DICOM node (e.g. the PACS that receives results)",
        description="Open an association with AE@HOST:PORT and send C-ECHO; exit 0 when it answers success.",
    )
    p.add_argument("destination", metavar="AE@HOST:PORT", help="e.g. ORTHANC@127.0.0.1:4242")
    p.add_argument("--calling-ae", default="XRAYTRIAGE", help="our AE title (default XRAYTRIAGE)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    p.set_defaults(handler=run_echo)


def run_echo(args: argparse.Namespace) -> int:
    from xraytriage.dicom import echo, parse_destination

    destination = parse_destination(args.destination)
    if echo(destination, calling_ae=args.calling_ae, timeout=args.timeout):
        print(f"{destination}: C-ECHO succeeded (calling AE {args.calling_ae})")
        return 0
    print(
        f"{destination}: no successful C-ECHO (not listening, association refused, or our AE title "
        f"{args.calling_ae} not allowed there)",
        file=sys.stderr,
    )
    return 1
