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
        help="checkpoint (.pt) written by `xraytriage train`, or the NAME of a fetched published "
        "model (`xraytriage models list`); default: the bundled model",
    )


def resolve_model_path(value: Path | None) -> Path:
    """The checkpoint file for ``--model``: a path, a fetched published model's NAME (its
    converted checkpoint in the cache), or the bundled default."""
    if value is None:
        return default_model_path()
    path = Path(value)
    if not path.is_file():
        from xraytriage.models.published import resolve_model_name

        resolved = resolve_model_name(path)
        if resolved is not None:
            return resolved
    return path
