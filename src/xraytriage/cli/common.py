"""Helpers shared by the CLI modules."""

from __future__ import annotations

import argparse
from pathlib import Path


def default_model_path() -> Path:
    """The bundled default model shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "default_model" / "model.pt"


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="checkpoint (.pt) written by `xraytriage train`; default: the bundled model",
    )


def resolve_model_path(value: Path | None) -> Path:
    return Path(value) if value is not None else default_model_path()
