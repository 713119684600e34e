"""Helpers shared by the CLI modules: the ``--model`` option and checks of the paths a
command reads and writes, made before any work starts."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from xraytriage.errors import ConfigError, MissingFileError


def default_model_path() -> Path:
    """The bundled default model shipped inside the package (``models.published.BUNDLED_MODEL``)."""
    from xraytriage.models.published import BUNDLED_MODEL

    return BUNDLED_MODEL


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
    """The checkpoint file for ``--model``: ``models.published.resolve_model``, the one rule
    (the CLI, ``ServeConfig.model_file`` and ``load_model`` all call it), imported on use so
    that building the parser stays light."""
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


def print_table(
    console,
    title: str,
    headers: list[str],
    rows: list[list[str]],
    keys: int = 1,
    wide: bool = False,
    width: int = 80,
) -> int:
    """A table that fits ``width`` columns without cutting a cell: when it is wider, the columns
    after the first ``keys`` (the row names, repeated) are split over several tables, titled
    "(part i of n)". ``wide`` prints it whole. Returns the number of tables printed."""
    from rich.table import Table

    def cell_width(i: int) -> int:
        return max(max((len(line) for line in headers[i].split("\n")), default=0),
                   *(len(r[i]) for r in rows)) + 3  # fmt: skip

    fixed = sum(cell_width(i) for i in range(keys)) + 1
    groups: list[list[int]] = [[]]
    used = fixed
    for i in range(keys, len(headers)):
        if groups[-1] and used + cell_width(i) > width and not wide:
            groups.append([])
            used = fixed
        groups[-1].append(i)
        used += cell_width(i)
    for part, group in enumerate(groups, 1):
        label = title if len(groups) == 1 else f"{title} (part {part} of {len(groups)})"
        table = Table(title=label)
        for i in [*range(keys), *group]:
            table.add_column(headers[i], justify="left" if i < keys else "right", no_wrap=True)
        for row in rows:
            table.add_row(*(row[i] for i in [*range(keys), *group]))
        needed = fixed + sum(cell_width(i) for i in group)
        console.print(table, width=max(needed, min(width, console.width or width)))
    return len(groups)
