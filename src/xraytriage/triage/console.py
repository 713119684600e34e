"""The readable summary of a worklist on the terminal (rich)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from xraytriage.triage.reasons import TIER_CRITICAL
from xraytriage.triage.worklist import WorklistRow, safe_text


def short_study(study: str, width: int = 32) -> str:
    """The end of a long study name (file name, last folders, UID tail): what tells studies apart."""
    if len(study) <= width:
        return study
    parts = study.replace("\\", "/").split("/")
    tail = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + 1 + len(tail) > width - 2:
            break
        tail = f"{part}/{tail}"
    return "…" + tail[-(width - 1) :]


def top_findings(findings: str, limit: int = 3) -> str:
    """The first ``limit`` findings of a worklist ``findings`` cell (most probable first),
    with a count of the rest: the console stays readable, the CSV keeps them all."""
    items = [f for f in (findings or "").split("; ") if f]
    if not items:
        return "-"
    rest = len(items) - limit
    return "; ".join(items[:limit]) + (f" (+{rest} more)" if rest > 0 else "")


def flag_badge(row: WorklistRow) -> str:
    """CRITICAL (white on red) for the critical tier, FLAGGED (red) for a flag, else a dash."""
    if row.tier == TIER_CRITICAL:
        return "[bold white on red]CRITICAL[/]"
    return "[bold red]FLAGGED[/]" if row.flagged else "[dim]-[/]"


def findings_cell(row: WorklistRow) -> str:
    """The top findings; for a flag no single finding explains, that short reason instead
    (the CSV/JSON ``flag_reason`` has the full sentence with both numbers)."""
    if row.findings:
        return escape(top_findings(row.findings))
    if row.flag_reason:  # the study threshold's sentence: P(abnormal) is in its own column
        return "abnormal, no single finding"
    return "-"


def worklist_table(rows: Sequence[WorklistRow], top: int = 10, title: str | None = None) -> Table:
    """Rank, the study flag, study, priority, P(abnormal) and at most three findings above
    threshold, for the ``top`` studies: the flag first, because that is what a reader acts on."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("rank", justify="right")
    table.add_column("flag", no_wrap=True, min_width=7)
    table.add_column("study", no_wrap=True)
    table.add_column("priority", justify="right")
    table.add_column("P(abnormal)", justify="right")
    table.add_column("images", justify="right")
    table.add_column("top findings above threshold (probability)", overflow="fold", min_width=24)
    routed = any(r.model for r in rows)  # triage --route: the findings cell names the model
    for row in [r for r in rows if r.ok][: max(0, top)]:
        site = f" (site {row.site_priority:.2f})" if row.site_priority is not None else ""
        table.add_row(
            str(row.rank),
            flag_badge(row),
            escape(short_study(safe_text(row.study))),
            f"[bold]{row.priority:.2f}[/]{site}" if row.flagged else f"{row.priority:.2f}{site}",
            f"{row.abnormal:.2f}",
            str(row.images),
            f"{row.model}: {findings_cell(row)}" if routed and row.model else findings_cell(row),
        )
    return table


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
) -> None:
    console = console or Console()
    ok = [r for r in rows if r.ok]
    if ok:
        shown = min(top, len(ok))
        console.print(worklist_table(rows, top=top, title=f"Worklist: top {shown} of {len(ok)}"))
    errors = [r for r in rows if not r.ok]
    for row in errors[:max_errors]:
        console.print(f"[red]error[/] {escape(safe_text(row.error))}", highlight=False, soft_wrap=True)
    if len(errors) > max_errors:
        console.print(f"[red]... and {len(errors) - max_errors} more error(s), see worklist.csv[/]")
    console.print(summary_line(rows, images_total, seconds), highlight=False)
    console.print(
        "[dim]Triage aid: the list is ordered by priority (= P(abnormal) unless urgency weights or a "
        "site priority raise it); FLAGGED = P(abnormal) at or above the model's high-specificity "
        "threshold; CRITICAL = a critical finding (e.g. Pneumothorax) at or above its own high-specificity threshold, listed first; findings are model probabilities above their operating thresholds, not a diagnosis.[/]"
    )
