"""Database rows -> the JSON the API returns and the CSV it exports (one shape for both pages
and programs). Findings are model probabilities at or above operating thresholds, never a
diagnosis; the study JSON says so in ``disclaimer``."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sqlalchemy import and_, case, func, or_, select

from xraytriage.scope import low_resolution_warning
from xraytriage.serving.db import DONE, ERROR, Heatmap, Image, Study
from xraytriage.triage.worklist import parse_findings, rounded

DISCLAIMER = "Model output to prioritise reading; not a diagnosis."
CSV_BASE = (
    "rank",
    "study_id",
    "name",
    "patient_id",
    "accession",
    "patient_age",
    "patient_sex",
    "study_date",
    "view",
    "body_part",
    "received_at",
    "state",
    "read_status",
    "priority",
    "abnormal",
    "flagged",
    "findings",
)


IDENTIFIERS = ("patient_id", "accession", "patient_age", "patient_sex", "study_date")
"""What identifies a patient on a shared screen; left out with ``serve --hide-identifiers``."""
AGE_UNITS = {"Y": "y", "M": "mo", "W": "wk", "D": "d"}


def dicom_age(value: str) -> str:
    """DICOM AS ``"045Y"`` -> ``"45 y"`` (``"003M"`` -> ``"3 mo"``); anything else as it came."""
    value = (value or "").strip()
    if len(value) == 4 and value[:3].isdigit() and value[3].upper() in AGE_UNITS:
        return f"{int(value[:3])} {AGE_UNITS[value[3].upper()]}"
    return value


def dicom_date(value: str) -> str:
    """DICOM DA ``"20240131"`` -> ``"2024-01-31"``; anything else as it came."""
    value = (value or "").strip()
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def pacs_fields(study: Study, hide_identifiers: bool = False) -> dict[str, Any]:
    """The DICOM fields that match a study with the PACS (patient, accession, age/sex, date,
    views, body parts); the patient's are None when identifiers are hidden."""
    fields: dict[str, Any] = {
        "patient_id": study.patient_id or None,
        "accession": study.accession or None,
        "patient_age": dicom_age(study.patient_age) or None,
        "patient_sex": study.patient_sex or None,
        "study_date": dicom_date(study.study_date) or None,
    }
    if hide_identifiers:
        fields = dict.fromkeys(fields)
    fields["view"] = study.views or None
    fields["body_part"] = study.body_parts or None
    fields["identifiers_hidden"] = hide_identifiers
    return fields


def iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def findings_list(text: str) -> list[dict[str, Any]]:
    """``"Effusion 0.81; Mass 0.64"`` -> [{"name": "Effusion", "probability": 0.81}, ...]."""
    return [{"name": name, "probability": p} for name, p in parse_findings(text)]


def _elapsed(start: float | None, end: float | None) -> float | None:
    """Seconds from the study's first image to a result (the service's own clock)."""
    if start is None or end is None:
        return None
    return round(max(0.0, end - start), 3)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def rank_of(session, study: Study) -> int | None:
    """The study's place in the worklist, counted in SQL (no need to load every study)."""
    if study.state != DONE or study.priority is None:
        return None
    ahead = or_(
        Study.priority > study.priority,
        and_(
            Study.priority == study.priority,
            or_(
                Study.received_at < study.received_at,
                and_(Study.received_at == study.received_at, Study.id < study.id),
            ),
        ),
    )
    return session.scalar(select(func.count()).select_from(Study).where(Study.state == DONE, ahead)) + 1


def study_flagged(study: Study, flag_at: float | None) -> bool | None:
    """The study flag, as in the CLI worklist: P(abnormal) at or above the model's study
    threshold (without one: any finding above its threshold). None until triaged."""
    if study.abnormal is None:
        return None
    return study.abnormal >= flag_at if flag_at is not None else bool(study.findings)


def study_summary(
    study: Study,
    rank: int | None = None,
    images: int | None = None,
    hide_identifiers: bool = False,
    flag_at: float | None = None,
) -> dict[str, Any]:
    return {
        "id": study.id,
        "rank": rank,
        "name": study.name,
        **pacs_fields(study, hide_identifiers),
        "source": study.source,
        "state": study.state,
        "read_status": study.read_status,
        "new_images_since_read": study.new_images_at is not None,
        "new_images_at": iso(study.new_images_at),
        "warnings": [w for w in (study.warnings or "").split("; ") if w],
        "priority": rounded(study.priority),
        "abnormal": rounded(study.abnormal),
        "flagged": study_flagged(study, flag_at),
        "findings": findings_list(study.findings),
        "findings_text": study.findings,
        "images": len(study.images) if images is None else images,
        "error": study.error or None,
        "received_at": iso(study.received_at),
        "predicted_at": iso(study.predicted_at),
        "explained_at": iso(study.explained_at),
        "heatmaps_state": study.heatmaps_state,
        "dicom_results_state": study.dicom_results_state if study.source == "dicom" else None,
        "seconds_to_result": _elapsed(study.received_at, study.predicted_at),
        "seconds_to_heatmaps": _elapsed(study.received_at, study.explained_at),
        "url": f"/studies/{study.id}",
        "api_url": f"/api/v1/studies/{study.id}",
    }


@dataclass
class WorklistPage:
    rows: list[tuple[Study, int | None, int]]
    """(study, rank among triaged studies or None, number of images)."""
    total: int


def _group():
    """Triaged studies first, then those still waiting, then the ones that could not be read."""
    return case((Study.state == DONE, 0), (Study.state == ERROR, 2), else_=1)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def finding_filter(name: str):
    """Studies whose ``findings`` text lists ``name`` ("Effusion 0.81; Mass 0.64")."""
    name = _like_escape(name)
    return or_(
        Study.findings.like(f"{name} %", escape="\\"), Study.findings.like(f"%; {name} %", escape="\\")
    )


def worklist(
    session,
    read_status: str | None = None,
    finding: str | None = None,
    state: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> WorklistPage:
    """The worklist in SQL: triaged studies by priority (highest first, then oldest), then
    waiting ones (oldest first), then unreadable ones. Ranks are those of the whole worklist,
    so a filtered view keeps them; ``finding`` is a model label name."""
    group = _group()
    order = (
        func.coalesce(case((Study.state == DONE, Study.priority), else_=None), -1.0).desc(),
        Study.received_at,
        Study.id,
    )
    positions = select(
        Study.id.label("id"),
        group.label("grp"),
        func.row_number().over(partition_by=group, order_by=order).label("pos"),
    ).subquery()
    images = select(func.count(Image.id)).where(Image.study_id == Study.id).correlate(Study).scalar_subquery()
    query = select(Study, positions.c.grp, positions.c.pos, images).join(
        positions, positions.c.id == Study.id
    )
    filters = []
    if read_status:
        filters.append(Study.read_status == read_status)
    if state:
        filters.append(Study.state == state)
    if finding:
        filters.append(finding_filter(finding))
    query = query.where(*filters)
    total = session.scalar(select(func.count()).select_from(Study).where(*filters))
    query = query.order_by(positions.c.grp, positions.c.pos).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    rows = [
        (study, int(pos) if grp == 0 else None, int(count))
        for study, grp, pos, count in session.execute(query)
    ]
    return WorklistPage(rows, int(total or 0))


def image_dict(image: Image) -> dict[str, Any]:
    return {
        "id": image.id,
        "filename": image.filename,
        "format": image.format,
        "state": image.state,
        "error": image.error or None,
        "width": image.width,
        "height": image.height,
        "modality": image.modality or None,
        "view": image.view_position or None,
        "body_part": image.body_part or None,
        "abnormal": rounded(image.abnormal),
        "received_at": iso(image.received_at),
        "processed_at": iso(image.processed_at),
        "display_url": f"/api/v1/images/{image.id}/display.png",
    }


def heatmap_dict(study_id: str, heatmap: Heatmap) -> dict[str, Any]:
    base = f"/api/v1/studies/{study_id}/heatmaps/{quote(heatmap.finding)}.png?image={heatmap.image_id}"
    return {
        "finding": heatmap.finding,
        "image_id": heatmap.image_id,
        "probability": rounded(heatmap.probability),
        "threshold": rounded(heatmap.threshold),
        "box": heatmap.box,
        "url": base,
        "layer_url": base + "&style=layer",
    }


def study_detail(session, study: Study, checkpoint, hide_identifiers: bool = False) -> dict[str, Any]:
    """Everything the study page shows: summary, findings table, images, heatmaps."""
    data = study_summary(
        study,
        rank_of(session, study),
        hide_identifiers=hide_identifiers,
        flag_at=checkpoint.study_flag_threshold,
    )
    size = int(checkpoint.preprocess.size)
    probabilities = study.probabilities
    table = []
    for name in checkpoint.label_names:
        if name not in probabilities:
            continue
        threshold = checkpoint.threshold(name) if name in checkpoint.findings else None
        p = probabilities[name]
        table.append(
            {
                "name": name,
                "probability": rounded(p),
                "threshold": rounded(threshold),
                "flagged": threshold is not None and p >= threshold,
                "is_finding": name in checkpoint.findings,
            }
        )
    table.sort(key=lambda item: (not item["is_finding"], -(item["probability"] or 0.0)))
    image_ids = [image.id for image in study.images]
    heatmaps = (
        session.scalars(select(Heatmap).where(Heatmap.image_id.in_(image_ids))).all() if image_ids else []
    )
    listed = [f["name"] for f in data["findings"]]
    order = {name: i for i, name in enumerate(listed)}
    heatmaps = sorted(
        heatmaps, key=lambda h: (h.image_id != study.key_image_id, order.get(h.finding, 99), h.finding)
    )
    data.update(
        {
            "key_image_id": study.key_image_id,
            "findings_table": table,
            "image_list": [
                {**image_dict(image), "warning": low_resolution_warning(image.width, image.height, size)}
                for image in study.images
            ],
            "heatmaps": [heatmap_dict(study.id, h) for h in heatmaps],
            "disclaimer": DISCLAIMER,
            "dicom_results_info": _json_or_none(study.dicom_results_info)
            if study.source == "dicom"
            else None,
        }
    )
    return data


def worklist_csv(
    rows: Sequence[tuple[Study, int | None, int]],
    label_names: Sequence[str],
    hide_identifiers: bool = False,
    flag_at: float | None = None,
) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*CSV_BASE, *label_names, "images", "error", "warnings"])
    for study, rank, images in rows:
        probabilities = study.probabilities
        pacs = pacs_fields(study, hide_identifiers)
        writer.writerow(
            [
                "" if rank is None else rank,
                study.id,
                study.name,
                *(pacs[k] or "" for k in (*IDENTIFIERS, "view", "body_part")),
                iso(study.received_at),
                study.state,
                study.read_status,
                "" if study.priority is None else f"{study.priority:.6f}",
                "" if study.abnormal is None else f"{study.abnormal:.6f}",
                "" if study.abnormal is None else study_flagged(study, flag_at),
                study.findings,
                *["" if probabilities.get(n) is None else f"{probabilities[n]:.6f}" for n in label_names],
                images,
                study.error,
                study.warnings,
            ]
        )
    return buffer.getvalue()
