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
