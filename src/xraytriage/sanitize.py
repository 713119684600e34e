"""Text that must survive a file system or a JSON parser: file-name slugs and JSON-safe values.

One rule each, so the run folders, heatmap files and summaries written by different commands
name and encode things the same way.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def file_slug(text: str, *, keep: str = "", lower: bool = False, fallback: str = "item") -> str:
    """``text`` as a portable file-name part: every run of characters other than ASCII letters,
    digits and those in ``keep`` becomes one ``_``, leading/trailing ``_`` are dropped, and an
    empty result becomes ``fallback``. ``lower`` lower-cases first.

    >>> file_slug("Pleural Thickening", lower=True)
    'pleural_thickening'
    >>> file_slug("IM-0001 (2).dcm", keep=".+-")
    'IM-0001_2_.dcm'
    """
    if lower:
        text = text.lower()
    slug = re.sub(f"[^A-Za-z0-9{re.escape(keep)}]+", "_", text).strip("_")
    return slug or fallback


def json_clean(value: Any) -> Any:
    """A value ``json.dumps`` writes as strict JSON: NaN and infinities become ``null``, numpy
    scalars Python numbers, tuples lists, mapping keys strings."""
    if isinstance(value, Mapping):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, data: Any) -> None:
    """``data`` cleaned by :func:`json_clean`, indented, with a final newline."""
    Path(path).write_text(json.dumps(json_clean(data), indent=2) + "\n")


FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
"""What a spreadsheet takes for a formula at the start of a cell (OWASP's CSV injection rule;
the newline too, which is what :func:`csv_cell` makes of a carriage return)."""
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


def csv_cell(value: Any) -> Any:
    """``value`` safe for a spreadsheet: text that starts with ``= + - @``, a tab or a carriage
    return gets a leading ``'`` so Excel/LibreOffice show it as text instead of running it
    (a DICOM PatientID ``=cmd|' /C calc'!A0``); numbers, plain numeric text (``-0.5``) and
    everything else pass unchanged. A carriage return inside text becomes a newline: Python's
    CSV writer quotes a cell with a newline but not one with a lone CR, which a spreadsheet
    would take for the start of a new row (whose first cell could be a formula).

    >>> csv_cell("=1+1"), csv_cell("@SUM(1)"), csv_cell("-0.25"), csv_cell(-3), csv_cell("ok")
    ("'=1+1", "'@SUM(1)", '-0.25', -3, 'ok')
    """
    if not isinstance(value, str):
        return value
    if "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    if value.startswith(FORMULA_START) and not _NUMBER.match(value):
        return "'" + value
    return value


def csv_uncell(value: Any) -> Any:
    """The text :func:`csv_cell` was given (for the project's own readers of its CSVs)."""
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith(FORMULA_START):
        return value[1:]
    return value


def csv_row(values: Any) -> list[Any]:
    """Every cell of one CSV row through :func:`csv_cell`."""
    return [csv_cell(v) for v in values]


def csv_safe_frame(frame: Any) -> Any:
    """A copy of a pandas DataFrame with every text cell, column name and index label through
    :func:`csv_cell` (numeric and boolean columns are left as they are)."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    safe = frame.copy()
    for i in range(safe.shape[1]):
        column = safe.iloc[:, i]
        if not (is_numeric_dtype(column.dtype) or is_bool_dtype(column.dtype)):
            safe.isetitem(i, column.map(csv_cell))
    safe.columns = [csv_cell(c) for c in safe.columns]
    if not is_numeric_dtype(safe.index.dtype):
        safe.index = [csv_cell(i) for i in safe.index]
    return safe


def write_csv(frame: Any, path: str | Path | None = None, **to_csv: Any) -> str | None:
    """``frame.to_csv(path, **to_csv)`` with :func:`csv_safe_frame` first: the one way every
    CSV the project writes from a table is written."""
    return csv_safe_frame(frame).to_csv(path, **to_csv)


def read_csv_cells(path: str | Path, **read_csv: Any) -> Any:
    """``pandas.read_csv`` of a CSV :func:`write_csv` wrote, with the text cells and column
    names as they were before :func:`csv_cell` (a predictions file read back for evaluation)."""
    import pandas as pd
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    frame = pd.read_csv(path, **read_csv)
    frame.columns = [csv_uncell(c) for c in frame.columns]
    for i in range(frame.shape[1]):
        column = frame.iloc[:, i]
        if not (is_numeric_dtype(column.dtype) or is_bool_dtype(column.dtype)):
            frame.isetitem(i, column.map(csv_uncell))
    if not is_numeric_dtype(frame.index.dtype):
        frame.index = [csv_uncell(i) for i in frame.index]
    return frame


class _SafeWriter:
    """``csv.writer`` whose rows go through :func:`csv_row`."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def writerow(self, row: Any) -> Any:
        return self._writer.writerow(csv_row(row))

    def writerows(self, rows: Any) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(fh: Any, **options: Any) -> _SafeWriter:
    """``csv.writer(fh, **options)`` with every cell through :func:`csv_cell`."""
    import csv

    return _SafeWriter(csv.writer(fh, **options))
