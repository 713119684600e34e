"""One rule for file-name slugs and JSON-safe values (xraytriage.sanitize)."""

from __future__ import annotations

import json
import math

import numpy as np

from xraytriage.sanitize import file_slug, json_clean, write_json
from xraytriage.train.tasks import slug


def test_file_slug_keeps_the_callers_rules() -> None:
    # binary-relevance sub-folders (train/tasks.slug)
    assert slug("Pleural Thickening") == "pleural_thickening"
    assert slug("No Finding") == "no_finding"
    assert slug("???") == "label"
    # heatmap file parts (triage --explain): dots, plus and minus survive
    assert file_slug("IM-0001 (2).dcm", keep=".+-", fallback="image") == "IM-0001_2_.dcm"
    assert file_slug("  ", keep=".+-", fallback="image") == "image"
    # nothing outside ASCII letters, digits and `keep`, and no separators at the ends
    assert file_slug("../../etc/passwd") == "etc_passwd"
    assert file_slug("Épanchement", keep="-_") == "panchement"


def test_json_clean_makes_strict_json(tmp_path) -> None:
    data = {1: np.float32(0.5), "nan": math.nan, "inf": [np.float64(np.inf), (np.int64(3), None)]}
    cleaned = json_clean(data)
    assert cleaned == {"1": 0.5, "nan": None, "inf": [None, [3, None]]}
    json.dumps(cleaned, allow_nan=False)  # raises on NaN/inf
    write_json(tmp_path / "x.json", data)
    text = (tmp_path / "x.json").read_text()
    assert text.endswith("\n") and json.loads(text) == cleaned
