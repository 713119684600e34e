"""The readable summary of a worklist on the terminal: fits 80 columns, ``wide`` shows all.

The table is built from a list of :class:`Column` specs (new columns slot in there) and
rendered as plain aligned text, so it never truncates a cell to "Infil…": cells that can be
long (the findings, warnings) go on their own wrapped line under the study (:data:`DETAILS`).
A column whose value equals another's for every shown row is left out (``priority`` is
``P(abnormal)`` unless urgency weights or a site priority raise it).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.text import Text

from xraytriage.triage.reasons import TIER_CRITICAL
from xraytriage.triage.worklist import WorklistRow, parse_findings, safe_text

NARROW = 80
"""The width the default table is made for (a classic terminal; also what piped output gets)."""
STUDY_WIDTH = 24
"""Most characters of a study key in the narrow table (the full key is in worklist.csv)."""
_UID = re.compile(r"^[0-9]+(\.[0-9]+){3,}$")


def short_study(study: str, width: int = STUDY_WIDTH) -> str:
    """What tells studies apart in ``width`` characters: a file's name (with as many parent
    folders as fit), or a DICOM UID's root and its last digits (``1.2.276…201.850818``)."""
    if len(study) <= width:
        return study
    if _UID.match(study):
        keep = width - 1
        head = study[: max(0, keep // 3)]
        return head + "…" + study[-(keep - len(head)) :]
    parts = [p for p in study.replace("\\", "/").split("/") if p]
    tail = parts[-1] if parts else study
    for part in reversed(parts[:-1]):
        if len(part) + 1 + len(tail) > width:
            break
        tail = f"{part}/{tail}"
    return tail if len(tail) <= width else "…" + tail[-(width - 1) :]


def top_findings(findings: str, limit: int = 3) -> str:
    """The first ``limit`` findings of a worklist ``findings`` cell (most probable first),
    with a count of the rest (for one-line summaries; the tables show them all)."""
    items = [f for f in (findings or "").split("; ") if f]
    if not items:
        return "-"
    rest = len(items) - limit
    return "; ".join(items[:limit]) + (f" (+{rest} more)" if rest > 0 else "")


def findings_text(findings: str) -> str:
    """``"Effusion 0.81; Mass 0.64"`` -> ``"Effusion 0.81, Mass 0.64"`` (names in full)."""
    items = parse_findings(findings)
    return ", ".join(f"{name} {p:.2f}" for name, p in items) if items else (findings or "")


@dataclass(frozen=True)
class Column:
    """One column of the console worklist. ``shown`` decides from the rows whether it appears
    (e.g. ``images`` only when some study has several); ``wide_only`` columns appear with
    ``--wide``; ``narrow`` is the cell in the 80-column table when it differs from ``cell``."""

    header: str
    cell: Callable[[WorklistRow], str]
    right: bool = False
    style: Callable[[WorklistRow], str] | None = None
    shown: Callable[[Sequence[WorklistRow]], bool] | None = None
    wide_only: bool = False
    narrow: Callable[[WorklistRow], str] | None = None


@dataclass(frozen=True)
class Detail:
    """A possibly long value printed on its own wrapped line under its study (narrow table),
    or as a last column (``--wide``)."""

    header: str
    cell: Callable[[WorklistRow], str]
    style: str = ""
    label: Callable[[WorklistRow], str] | None = None
    """The word before the value on its own line, when it depends on the row (default ``header``)."""


def _site(row: WorklistRow) -> str:
    return f" (site {row.site_priority:.2f})" if row.site_priority is not None else ""


def _raised(rows: Sequence[WorklistRow]) -> bool:
    return any(
        r.priority is not None and r.abnormal is not None and round(r.priority, 2) != round(r.abnormal, 2)
        for r in rows
    ) or any(r.site_priority is not None for r in rows)


def flag_text(row: WorklistRow) -> str:
    """CRITICAL for the critical tier (a critical finding at or above its own high-specificity
    threshold), FLAGGED for a flag, else a dash."""
    if row.tier == TIER_CRITICAL:
        return "CRITICAL"
    return "FLAGGED" if row.flagged else "-"


def flag_style(row: WorklistRow) -> str:
    if row.tier == TIER_CRITICAL:
        return "bold white on red"
    return "bold red" if row.flagged else "dim"


def findings_detail(row: WorklistRow) -> str:
    """Every finding in full; for a flag no single finding explains, the reason instead (the
    CSV/JSON ``flag_reason`` has it with both numbers); routed worklists name the model."""
    text = findings_text(row.findings)
    if not text and row.flagged and row.flag_reason:
        text = row.flag_reason
    if text and row.model:
        text = f"{row.model} model: {text}"
    return text


COLUMNS: list[Column] = [
    Column("rank", lambda r: str(r.rank), right=True),
    Column("flag", flag_text, style=flag_style),
    Column("P(abn)", lambda r: f"{r.abnormal:.2f}", right=True),
    Column("priority", lambda r: f"{r.priority:.2f}{_site(r)}", right=True, shown=_raised),
    Column("images", lambda r: str(r.images), right=True, shown=lambda rows: any(r.images > 1 for r in rows)),
    Column(
        "study",
        lambda r: safe_text(r.study),
        narrow=lambda r: short_study(safe_text(r.study)),
    ),
]
"""The columns, in order; the study key last so a long one (``--wide``) does not push the others."""

DETAILS: list[Detail] = [
    Detail("findings", findings_detail, label=lambda r: "findings" if r.findings else "why flagged"),
    Detail("warnings", lambda r: safe_text(r.warnings), style="yellow"),
]
"""Long values: their own line under the study in the narrow table, last columns with ``--wide``."""


def worklist_lines(
    rows: Sequence[WorklistRow], top: int = 10, *, wide: bool = False, width: int = NARROW
) -> list[Text]:
    """The worklist table as lines: the ``top`` triaged studies, every finding in full. Narrow
    lines fit ``width`` (long details wrap under their study); ``wide`` puts everything on one
    line per study, untruncated."""
    shown = [r for r in rows if r.ok][: max(0, top)]
    columns = [c for c in COLUMNS if (wide or not c.wide_only) and (c.shown is None or c.shown(shown))]

    def value(column: Column, row: WorklistRow) -> str:
        return (column.narrow or column.cell)(row) if not wide and column.narrow else column.cell(row)

    cells = [[value(c, r) for c in columns] for r in shown]
    details = [d for d in DETAILS if any(d.cell(r) for r in shown)]
    if wide:
        cells = [row + [d.cell(r) or "-" for d in details] for row, r in zip(cells, shown, strict=True)]
    headers = [c.header for c in columns] + ([d.header for d in details] if wide else [])
    rights = [c.right for c in columns] + [False] * (len(headers) - len(columns))
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str], styles: Sequence[str]) -> Text:
        text = Text()
        for i, (v, w, style) in enumerate(zip(values, widths, styles, strict=True)):
            if i:
                text.append("  ")
            last = i == len(values) - 1
            padded = v.rjust(w) if rights[i] else (v if last else v.ljust(w))
            text.append(padded, style=style)
        return text

    out = [line(headers, ["bold"] * len(headers))]
    indent = widths[0] + 2
    for row, values in zip(shown, cells, strict=True):
        styles = [(c.style(row) if c.style else "") for c in columns] + [d.style for d in details]
        out.append(line(values, styles[: len(values)]))
        if wide:
            continue
        for detail in details:
            value_text = detail.cell(row)
            if not value_text:
                continue
            wrapped = textwrap.wrap(
                f"{detail.label(row) if detail.label else detail.header}: {value_text}",
                width=max(20, width - indent),
                break_on_hyphens=False,
                subsequent_indent="  ",
            )
            out.extend(Text(" " * indent + part, style=detail.style) for part in wrapped)
    return out


LEGEND = (
    "Triage aid, not a diagnosis. P(abn) = the model's calibrated probability that the study is "
    "abnormal; FLAGGED = P(abn) at or above the model's high-specificity threshold; CRITICAL = a "
    "critical finding (e.g. Pneumothorax) at or above its own high-specificity threshold, listed "
    "first; findings = "
    "model probabilities at or above each finding's operating threshold. Sorted by priority "
    "(= P(abn) unless urgency weights or a site priority raise it). Full study keys and every "
    "column: worklist.csv, or --wide."
)


def summary_line(rows: Sequence[WorklistRow], images_total: int, seconds: float) -> str:
    studies = sum(1 for r in rows if r.ok)
    errors = [r for r in rows if not r.ok]
    flagged = sum(1 for r in rows if r.ok and r.flagged)
    critical = sum(1 for r in rows if r.ok and r.tier == TIER_CRITICAL)
    with_findings = sum(1 for r in rows if r.ok and r.findings)
    speed = f", {images_total / seconds:.1f} images/s" if seconds > 0 else ""
    return (
        f"{images_total} file(s) -> {studies} stud{'y' if studies == 1 else 'ies'} triaged, "
        f"{critical} critical, {flagged} flagged, {with_findings} with findings above threshold, {len(errors)} error(s){speed}"
    )


def print_worklist(
    rows: Sequence[WorklistRow],
    images_total: int,
    seconds: float,
    top: int = 10,
    console: Console | None = None,
    max_errors: int = 5,
    wide: bool = False,
) -> None:
    """The table, the first errors, a summary and the legend. Narrow tables fit the console's
    width when it is below 80 columns, else 80 (a wider terminal does not make them sprawl)."""
    console = console or Console()
    width = min(NARROW, console.width) if console.width else NARROW
    ok = [r for r in rows if r.ok]
    if ok:
        shown = min(top, len(ok))
        console.print(Text(f"Worklist: top {shown} of {len(ok)}", style="bold"))
        for text in worklist_lines(rows, top=top, wide=wide, width=width):
            console.print(text, overflow="ignore", crop=False, no_wrap=True, soft_wrap=wide)
    errors = [r for r in rows if not r.ok]
    for row in errors[:max_errors]:
        console.print(Text.assemble(("error ", "red"), safe_text(row.error)), soft_wrap=wide)
    if len(errors) > max_errors:
        console.print(
            Text(f"... and {len(errors) - max_errors} more error(s), see worklist.csv", style="red")
        )
    console.print(summary_line(rows, images_total, seconds), highlight=False, soft_wrap=wide)
    console.print(Text(LEGEND, style="dim"), soft_wrap=wide)
