"""Helpers shared by the CLI modules: the ``--model`` option and checks of the paths a
command reads and writes, made before any work starts."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from xraytriage.errors import ConfigError, MissingFileError


def default_model_path() -> Path:
    """The bundled default model shipped inside the package (``models.published.BUNDLED_MODEL``)."""
    return Path(__file__).resolve().parent.parent / "assets" / "default_model" / "model.pt"


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        metavar="MODEL",
        help="a checkpoint (.pt) written by `xraytriage train`, the NAME of a fetched published model, "
        "or `default` / `nih-default-compact` for the bundled model (`xraytriage models list` shows "
        "the names); default: the bundled model",
    )


def resolve_model_path(value: str | Path | None) -> Path:
    """The checkpoint file for ``--model`` (``models.published.resolve_model``: the one rule)."""
    from xraytriage.models.published import resolve_model

    return resolve_model(value)


def check_inputs(inputs: Iterable[str | Path], what: str = "input") -> None:
    """Every named file or folder exists (before a model is loaded or a line printed)."""
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if len(missing) == 1:
        raise MissingFileError(missing[0], f"{what} file or folder")
    if missing:
        raise MissingFileError(", ".join(missing), f"{what} files or folders ({len(missing)})")


def check_output_dir(path: str | Path, option: str = "--output") -> Path:
    """``path`` can be the output folder: not an existing file, and its nearest existing
    parent is a folder (created later, when there is something to write)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"{path}: {option} must be a folder, but a file of that name exists; "
            f"choose another {option} or move the file"
        )
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{path}: {option} cannot be created: {parent} is a file, not a folder")
    return path
