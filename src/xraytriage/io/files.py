"""Expanding user inputs (files and folders) into the list of files to read."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from xraytriage.io.formats import IMAGE_EXTENSIONS, ImageFormat, sniff_format


def _looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    if path.suffix:  # .txt, .csv, .json ... next to the images are not inputs
        return False
    try:  # DICOM files often have no extension at all
        return sniff_format(path) is not ImageFormat.UNKNOWN
    except OSError:
        return False


def iter_input_files(inputs: Iterable[str | Path], recursive: bool = True) -> Iterator[Path]:
    """Yield the files to process, in a stable order.

    A file named explicitly is always yielded (so a bad file is reported, never silently dropped);
    inside folders, hidden files and files that are clearly not images are skipped.
    A path that does not exist is yielded too: reading it produces the error that names it.
    """
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            yield path
            continue
        walker = os.walk(path) if recursive else [(str(path), [], os.listdir(path))]
        for root, dirs, files in walker:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                candidate = Path(root) / name
                if not name.startswith(".") and candidate.is_file() and _looks_like_image(candidate):
                    yield candidate
