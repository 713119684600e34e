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


INJECTIONS = ["=cmd|' /C calc'!A0", "@SUM(1+1)*cmd", "+1+cmd", "-2+3+cmd", "\t=1", "\r=1"]


def test_csv_cell_neutralises_formulas_and_keeps_numbers() -> None:
    from xraytriage.sanitize import csv_cell, csv_uncell

    for text in INJECTIONS[:-1]:
        assert csv_cell(text) == "'" + text
        assert csv_uncell(csv_cell(text)) == text
    # a lone CR would start a new spreadsheet row unquoted: it becomes a (quoted) newline
    assert csv_cell("\r=1") == "'\n=1" and csv_cell("a\rb") == "a\nb"
    for kept in ["-0.25", "+3", "1e-3", "-1.5E+02", "plain", "", "'quoted", 7, -3.5, None]:
        assert csv_cell(kept) == kept
    assert csv_uncell("'plain") == "'plain"  # only what csv_cell added is taken off


def test_write_csv_neutralises_every_text_cell_header_and_index(tmp_path) -> None:
    import csv

    import pandas as pd

    from xraytriage.sanitize import read_csv_cells, write_csv

    frame = pd.DataFrame(
        {"path": INJECTIONS, "=label": range(len(INJECTIONS)), "prob": [-0.5] * len(INJECTIONS)},
        index=[f"@row{i}" for i in range(len(INJECTIONS))],
    )
    write_csv(frame, tmp_path / "t.csv", index_label="name")
    with open(tmp_path / "t.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    for row in rows:
        assert not any(cell.startswith(("=", "+", "@", "\t", "\r")) for cell in row), row
        assert not any(cell.startswith("-") and not cell.startswith("-0.5") for cell in row), row
    assert [r[3] for r in rows[1:]] == ["-0.5"] * len(INJECTIONS)  # numbers stay numbers
    back = read_csv_cells(tmp_path / "t.csv", index_col="name")
    assert list(back["path"]) == [*INJECTIONS[:-1], "\n=1"] and list(back.columns) == [
        "path",
        "=label",
        "prob",
    ]


def test_cli_worklist_csv_is_spreadsheet_safe_and_reads_back(tmp_path) -> None:
    import csv

    from xraytriage.triage.worklist import WorklistRow, read_worklist_csv, write_worklist

    rows = [
        WorklistRow(path=f"{text}.png", study=text, status="ok", priority=0.5, abnormal=0.5, rank=i + 1)
        for i, text in enumerate(INJECTIONS)
    ]
    csv_path, _ = write_worklist(rows, tmp_path, ["Effusion"])
    with open(csv_path, newline="") as fh:
        cells = [cell for row in csv.reader(fh) for cell in row]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))]
    assert [r["study"] for r in read_worklist_csv(csv_path)] == [*INJECTIONS[:-1], "\n=1"]


def test_csv_writer_neutralises_every_cell() -> None:
    import csv
    import io

    from xraytriage.sanitize import csv_writer

    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(["=head", 1])
    writer.writerows([["@x", -2.5], ["ok", "+y"]])
    assert list(csv.reader(io.StringIO(buffer.getvalue()))) == [
        ["'=head", "1"],
        ["'@x", "-2.5"],
        ["ok", "'+y"],
    ]
