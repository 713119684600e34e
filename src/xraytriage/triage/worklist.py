"""The worklist row: one per study (or per unreadable file), the same type for the CSV/JSON
files, the web service's database and its API.

Columns, in order: ``rank, study, path, priority, abnormal, flagged, status, error,
findings``, one column per model label holding its calibrated probability, then ``images``
(how many images the study has), ``site_priority`` (the priority the site gave, if any),
``warnings`` (caveats such as a low resolution, an age outside the model's, ood_score >= 1),
``tier``, ``flag_reason`` and ``ood_score`` (how unlike the training images the study's least
typical image is, 1.0 = the warning line set on the training images; empty without a reference
or for error rows).

``tier`` is ``critical`` (a critical finding at or above its own high-specificity threshold),
``flagged`` or ``routine``; ``flag_reason`` says what drives a flag (``triage/reasons.py``):
no flagged or critical row is without one. Critical studies sort first.

``abnormal`` is the model's calibrated P(abnormal) (at the deployment prevalence the model was
calibrated for); ``priority`` is what orders the list: equal to ``abnormal`` unless urgency
weights raise it for urgent findings or the site gave a higher priority (``triage/priority.py``).
``flagged`` says whether ``abnormal`` reaches the model's study operating threshold (chosen
at high specificity on out-of-fold predictions); ``findings`` lists every finding at or above
its own threshold, most probable first.

File names are data: a name that is not valid UTF-8 (bytes kept as surrogates by Python) is
written with its odd bytes as ``\\xNN`` escapes (:func:`safe_text`), never losing the file.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xraytriage.sanitize import csv_cell, csv_uncell
from xraytriage.triage.reasons import tier_rank
from xraytriage.triage.worklist_order import sort_key

BASE_COLUMNS = ("rank", "study", "path", "priority", "abnormal", "flagged", "status", "error", "findings")
TAIL_COLUMNS = ("images", "site_priority", "warnings", "tier", "flag_reason", "ood_score")
ROUTING_COLUMNS = ("urgency", "body_part", "model")
"""Added after the tail when images were routed by body part (``triage --route``)."""
STATUS_OK = "ok"
STATUS_ERROR = "error"
DECIMALS = 6


def worklist_columns(label_names: Sequence[str]) -> list[str]:
    return [*BASE_COLUMNS, *label_names, *TAIL_COLUMNS]


def format_findings(probabilities: dict[str, float], thresholds: dict[str, float]) -> str:
    """Findings at or above their operating threshold, most probable first: ``"Effusion 0.81; Mass 0.64"``.

    ``thresholds`` lists the labels that count as findings; others (No Finding) are skipped.
    These are model outputs to look at first, never a diagnosis.
    """
    flagged = [
        (name, p)
        for name, p in probabilities.items()
        if name in thresholds and p is not None and p >= thresholds[name]
    ]
    flagged.sort(key=lambda item: (-item[1], item[0]))
    return "; ".join(f"{name} {p:.2f}" for name, p in flagged)


def parse_findings(text: str | None) -> list[tuple[str, float]]:
    """The inverse of :func:`format_findings`: ``"Effusion 0.81; Mass 0.64"`` ->
    ``[("Effusion", 0.81), ("Mass", 0.64)]`` (names may contain spaces)."""
    items = []
    for part in (text or "").split("; "):
        if part.strip():
            name, _, value = part.rpartition(" ")
            items.append((name, float(value)))
    return items


def safe_text(text: str) -> str:
    """``text`` as valid UTF-8: bytes of a non-UTF-8 file name (surrogates from the file
    system) become ``\\xNN`` escapes, so the worklist can always be written and read."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # also lone surrogates that did not come from a file name
        raw = b"".join(_char_bytes(ch) for ch in text)
    return raw.decode("utf-8", "backslashreplace")


def _char_bytes(ch: str) -> bytes:
    try:
        return ch.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return ch.encode("utf-8", "surrogatepass")


def _safe(value: Any) -> Any:
    return safe_text(value) if isinstance(value, str) else value


def rounded(value: float | None) -> float | None:
    """A probability or priority as written to worklists and the API (``DECIMALS`` places)."""
    return None if value is None else round(float(value), DECIMALS)


@dataclass
class WorklistRow:
    """One line of the worklist. ``rank`` is set when the worklist is sorted (None for errors)."""

    study: str
    path: str
    status: str = STATUS_OK
    priority: float | None = None
    abnormal: float | None = None
    flagged: bool | None = None
    """P(abnormal) at or above the study flag threshold (None for error rows)."""
    error: str = ""
    findings: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    images: int = 1
    site_priority: float | None = None
    rank: int | None = None
    image_paths: list[str] = field(default_factory=list)
    """Every image of the study (``path`` is the one with the highest abnormal probability)."""
    warnings: str = ""
    """Caveats the reader should see, ``"; "``-separated (e.g. a low-resolution image)."""
    tier: str | None = None
    """``critical``, ``flagged`` or ``routine`` (``triage.reasons``); None for error rows."""
    flag_reason: str = ""
    """What drives the flag (``triage.reasons.flag_reason``); empty for routine studies."""
    ood_score: float | None = None
    """The highest ``ood_score`` of the study's images (``models.ood``; 1.0 = the warning line);
    None if not scored."""
    body_part: str = ""
    """Routed worklists: the body part the image was routed by (``triage/routing.py``)."""
    model: str = ""
    """Routed worklists: the name of the model that scored the study."""
    urgency: float | None = None
    """Routed worklists: ``priority`` on the one scale shared by every model
    (``triage.priority.on_reference_scale``); what orders the rows within a tier. None: the
    row's own ``priority`` orders it (single-model worklists)."""

    @classmethod
    def error_row(cls, study: str, path: str, error: str) -> WorklistRow:
        return cls(study=study, path=path, status=STATUS_ERROR, error=error, images=0, image_paths=[path])

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def to_dict(self, label_names: Sequence[str] | None = None, routed: bool | None = None) -> dict[str, Any]:
        """Flat, JSON-ready mapping in column order; ``None`` for blanks. ``routed`` adds
        ``body_part`` and ``model`` (default: when this row has either)."""
        labels = list(label_names) if label_names is not None else list(self.probabilities)
        data: dict[str, Any] = {
            "rank": self.rank,
            "study": self.study,
            "path": self.path,
            "priority": rounded(self.priority),
            "abnormal": rounded(self.abnormal),
            "flagged": self.flagged,
            "status": self.status,
            "error": self.error or None,
            "findings": self.findings or None,
        }
        for name in labels:
            data[name] = rounded(self.probabilities.get(name))
        data["images"] = self.images
        data["site_priority"] = rounded(self.site_priority)
        data["warnings"] = self.warnings or None
        data["tier"] = self.tier
        data["flag_reason"] = self.flag_reason or None
        data["ood_score"] = rounded(self.ood_score)
        if routed or (routed is None and (self.body_part or self.model)):
            data["urgency"] = rounded(self.urgency)
            data["body_part"] = self.body_part or None
            data["model"] = self.model or None
        return data


def order_values(row: WorklistRow) -> dict[str, Any]:
    """A row's values for the keys of ``triage.worklist_order.WORKLIST_ORDER``."""
    return {
        "queue_first": tier_rank(row.tier, row.site_priority),
        "priority": order_score(row.priority, row.urgency),
        "site_priority": row.site_priority,
        "study": row.study,
        "path": row.path,
    }


def order_score(priority: float | None, urgency: float | None) -> float | None:
    """The score that orders studies within a tier: ``urgency`` (a routed study's priority on
    the scale shared by every model, ``triage.priority.on_reference_scale``) when it has one,
    else its ``priority`` (None when neither: the order's null rule puts it last). The service's
    SQL orders by the same ``coalesce(urgency, priority)``."""
    return priority if urgency is None else urgency


def sort_worklist(rows: Iterable[WorklistRow]) -> list[WorklistRow]:
    """Triaged studies ranked 1..n in the order of ``triage.worklist_order`` (critical and STAT
    first, then priority (a routed row's ``urgency``, :func:`order_score`), then site priority, then the study name). Error rows after them,
    unranked, by path. See ``triage.priority`` for why a site priority is a floor."""
    rows = list(rows)
    ok = sorted((r for r in rows if r.ok), key=lambda r: sort_key(order_values(r)))
    errors = sorted((r for r in rows if not r.ok), key=lambda r: r.path)
    for rank, row in enumerate(ok, start=1):
        row.rank = rank
    for row in errors:
        row.rank = None
    return [*ok, *errors]


def write_worklist(
    rows: Sequence[WorklistRow], output_dir: str | Path, label_names: Sequence[str]
) -> tuple[Path, Path]:
    """Write ``worklist.csv`` and ``worklist.json`` (a list of the same rows) into ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    routed = any(row.body_part or row.model for row in rows)
    columns = [*worklist_columns(label_names), *(ROUTING_COLUMNS if routed else ())]
    records = [{k: _safe(v) for k, v in row.to_dict(label_names, routed).items()} for row in rows]
    csv_path, json_path = output_dir / "worklist.csv", output_dir / "worklist.json"
    tmp_csv, tmp_json = csv_path.with_suffix(".csv.tmp"), json_path.with_suffix(".json.tmp")
    with open(tmp_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writerow({c: csv_cell(c) for c in columns})
        for record in records:  # spreadsheet-safe cells (OWASP); read_worklist_csv undoes it
            writer.writerow({k: ("" if v is None else csv_cell(v)) for k, v in record.items()})
    tmp_json.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp_csv.replace(csv_path)
    tmp_json.replace(json_path)
    return csv_path, json_path


def _parse_cell(column: str, text: str) -> Any:
    if text == "":
        return None
    if column in ("rank", "images"):
        return int(text)
    if column == "flagged":
        return text == "True"
    if column in (
        "study",
        "path",
        "status",
        "error",
        "findings",
        "warnings",
        "tier",
        "flag_reason",
        "body_part",
        "model",
    ):
        return text
    return float(text)


def read_worklist_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a worklist CSV with the types :meth:`WorklistRow.to_dict` gives (blank -> None)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {csv_uncell(k): _parse_cell(csv_uncell(k), csv_uncell(v)) for k, v in record.items()}
            for record in csv.DictReader(fh)
        ]
