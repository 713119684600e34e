"""One self-contained HTML page (images embedded as base64, inline CSS, no scripts, no external
resources) so a report can be mailed or archived as a single file.

Cells never show ``nan`` or ``<NA>`` (:func:`cell_text`); tables longer than
:data:`LONG_TABLE` rows show their first rows and the whole table collapsed in ``<details>``.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

MISSING = "–"
NOT_ENOUGH = "not enough positives"
PREVIEW_ROWS = 8
"""Rows of a long table shown before its collapsed full version."""
LONG_TABLE = 20


def cell_text(value: Any, digits: int = 3, missing: str = MISSING) -> str:
    """One table cell: numbers rounded, missing values (None, NaN, pd.NA) as ``missing`` (never
    ``nan`` or ``<NA>``)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return missing
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if not math.isfinite(float(value)):
            return missing
        return f"{float(value):.{digits}f}"
    text = str(value)
    return missing if text.strip().lower() in ("nan", "<na>", "none", "nat") else text


def table_html(frame: pd.DataFrame, digits: int = 3) -> str:
    """A plain HTML table of ``frame`` (index columns as row headers) through :func:`cell_text`."""
    index_names = [n if n is not None else "" for n in frame.index.names]
    show_index = not (
        len(index_names) == 1 and index_names[0] == "" and isinstance(frame.index, pd.RangeIndex)
    )
    head = "".join(f"<th>{html.escape(str(n))}</th>" for n in (index_names if show_index else []))
    head += "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for key, values in zip(frame.index, frame.itertuples(index=False, name=None), strict=True):
        keys = (key if isinstance(key, tuple) else (key,)) if show_index else ()
        cells = "".join(f"<th>{html.escape(cell_text(k, digits))}</th>" for k in keys)
        cells += "".join(f"<td>{html.escape(cell_text(v, digits))}</td>" for v in values)
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


class HtmlReport:
    """Collects sections and writes PNG files plus one self-contained HTML page."""

    def __init__(self, output_dir: str | Path, title: str) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.parts: list[str] = []
        self.figures: list[Path] = []

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def warning(self, text: str) -> None:
        self.parts.append(f"<p class='warning'><b>Warning:</b> {html.escape(text)}</p>")

    def header(self, items: Mapping[str, Any]) -> None:
        """The "what was evaluated" block: one row per item, missing values said so."""
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(cell_text(v, missing='not recorded'))}</td></tr>"
            for k, v in items.items()
        )
        self.parts.append(f"<table class='header'>{rows}</table>")

    def table(
        self,
        frame: pd.DataFrame,
        caption: str | None = None,
        digits: int = 3,
        preview: int | None = None,
        note: str = "",
    ) -> None:
        """A table; one longer than :data:`LONG_TABLE` rows shows its first ``preview`` rows
        (order the interesting ones first) and the whole table collapsed below them."""
        title = f"<h3>{html.escape(caption)}</h3>" if caption else ""
        if note:
            title += f"<p class='note'>{html.escape(note)}</p>"
        if len(frame) <= LONG_TABLE:
            self.parts.append(title + table_html(frame, digits))
            return
        k = preview or PREVIEW_ROWS
        self.parts.append(
            title
            + table_html(frame.iloc[:k], digits)
            + f"<details><summary>All {len(frame)} rows</summary>{table_html(frame, digits)}</details>"
        )

    def figure(self, fig, name: str, caption: str = "") -> Path:
        """Save ``fig`` as ``<name>.png`` and embed the same bytes in the page."""
        path = self.output_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        alt = html.escape(caption or name)
        self.parts.append(
            f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"/>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        self.figures.append(path)
        return path

    def write(self, name: str = "report.html") -> Path:
        style = (
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
            "table{border-collapse:collapse;font-size:12px;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
            "th{background:#f4f4f4}"
            "table.header th{text-align:left}table.header td{text-align:left}"
            ".warning{color:#a00;border:2px solid #a00;padding:.5em;background:#fff4f4}"
            ".note{font-size:12px;color:#555}"
            "details{margin:0 0 1em 0}summary{cursor:pointer;color:#036}"
            "img{max-width:100%}"
            "figure{margin:1em 0}figcaption{font-size:12px;color:#555}"
        )
        page = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{style}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>{''.join(self.parts)}</body></html>"
        )
        path = self.output_dir / name
        path.write_text(page, encoding="utf-8")
        return path
