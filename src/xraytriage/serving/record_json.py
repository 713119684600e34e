"""Records -> the JSON the API returns and the CSV it exports (one shape for both pages and
programs; :mod:`~xraytriage.serving.schemas` types it). Findings are model probabilities at
or above operating thresholds, never a diagnosis; the study JSON says so in ``disclaimer``."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from xraytriage.sanitize import csv_writer
from xraytriage.scope import low_resolution_warning
from xraytriage.serving.records import HeatmapRecord, ImageRecord, StudyRecord, StudyView
from xraytriage.triage.worklist import rounded

DISCLAIMER = "Triage aid: model output to prioritise reading, not a diagnosis."
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
CSV_TAIL = ("tier", "flag_reason", "ood_score")
CSV_ROUTED = ("urgency", "routed_body_part", "model")
"""Added at the end of a routed service's CSV (docs/routing.md)."""


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


def pacs_fields(study: StudyRecord, hide_identifiers: bool = False) -> dict[str, Any]:
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


def _elapsed(start: float | None, end: float | None) -> float | None:
    """Seconds from the study's first image to a result (the service's own clock)."""
    if start is None or end is None:
        return None
    return round(max(0.0, end - start), 3)


def study_flagged(study: StudyRecord, flag_at: float | None) -> bool | None:
    """The study flag, as in the CLI worklist: P(abnormal) at or above the model's study
    threshold (without one: any finding above its threshold). None until triaged."""
    if study.abnormal is None:
        return None
    return study.abnormal >= flag_at if flag_at is not None else bool(study.findings)


def study_summary(
    study: StudyRecord,
    rank: int | None = None,
    images: int = 0,
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
        "site_priority": rounded(study.site_priority),
        "abnormal": rounded(study.abnormal),
        "flagged": study_flagged(study, flag_at),
        "tier": study.tier if study.abnormal is not None else None,
        "flag_reason": study.flag_reason or None,
        "ood_score": rounded(study.ood_score),
        "routed_body_part": study.body_part or None,
        "model": study.model or None,
        "urgency": rounded(study.urgency),
        "findings": [f.to_dict() for f in study.findings],
        "findings_text": study.findings_text,
        "images": images,
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


def image_dict(image: ImageRecord) -> dict[str, Any]:
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
        "routed_body_part": image.routed_body_part or None,
        "model": image.model or None,
        "abnormal": rounded(image.abnormal),
        "received_at": iso(image.received_at),
        "processed_at": iso(image.processed_at),
        "display_url": f"/api/v1/images/{image.id}/display.png",
    }


def heatmap_dict(study_id: str, heatmap: HeatmapRecord) -> dict[str, Any]:
    from xraytriage.explain.overlay import HEAT_LEVEL, OPACITY, SHADE, finding_colour

    base = f"/api/v1/studies/{study_id}/heatmaps/{quote(heatmap.finding)}.png?image={heatmap.image_id}"
    red, green, blue = finding_colour(heatmap.finding)
    return {
        "colour": f"#{red:02x}{green:02x}{blue:02x}",
        "scale": {"level": HEAT_LEVEL, "opacity": list(OPACITY), "shade": list(SHADE)},
        "finding": heatmap.finding,
        "image_id": heatmap.image_id,
        "probability": rounded(heatmap.probability),
        "threshold": rounded(heatmap.threshold),
        "box": heatmap.box,
        "url": base,
        "layer_url": base + "&style=layer",
    }


def study_detail(view: StudyView, checkpoint, hide_identifiers: bool = False) -> dict[str, Any]:
    """Everything the study page shows: summary, findings table, images, heatmaps."""
    study = view.study
    data = study_summary(
        study,
        view.rank,
        len(view.images),
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
    listed = [f["name"] for f in data["findings"]]
    order = {name: i for i, name in enumerate(listed)}
    heatmaps = sorted(
        view.heatmaps, key=lambda h: (h.image_id != study.key_image_id, order.get(h.finding, 99), h.finding)
    )
    data.update(
        {
            "key_image_id": study.key_image_id,
            "findings_table": table,
            "image_list": [
                {**image_dict(image), "warning": low_resolution_warning(image.width, image.height, size)}
                for image in view.images
            ],
            "heatmaps": [heatmap_dict(study.id, h) for h in heatmaps],
            "disclaimer": DISCLAIMER,
            "dicom_results_info": study.dicom_results_info if study.source == "dicom" else None,
        }
    )
    return data


def _routed_cells(study: StudyRecord) -> list[str]:
    return ["" if study.urgency is None else f"{study.urgency:.6f}", study.body_part, study.model]


def worklist_csv(
    rows: Sequence[tuple[StudyRecord, int | None, int]],
    label_names: Sequence[str],
    hide_identifiers: bool = False,
    flag_at: float | Callable[[StudyRecord], float | None] | None = None,
    routed: bool = False,
) -> str:
    """The worklist CSV; ``flag_at`` may be each study's own threshold (a function of the
    study: routed services); ``routed`` adds :data:`CSV_ROUTED`."""
    buffer = io.StringIO()
    writer = csv_writer(buffer)  # spreadsheet-safe cells (sanitize.csv_cell)
    writer.writerow(
        [*CSV_BASE, *label_names, "images", "error", "warnings", *CSV_TAIL, *(CSV_ROUTED if routed else ())]
    )
    flag_of = flag_at if callable(flag_at) else (lambda study: flag_at)
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
                "" if study.abnormal is None else study_flagged(study, flag_of(study)),
                study.findings_text,
                *["" if probabilities.get(n) is None else f"{probabilities[n]:.6f}" for n in label_names],
                images,
                study.error,
                study.warnings,
                study.tier or "",
                study.flag_reason,
                "" if study.ood_score is None else f"{study.ood_score:.6f}",
                *(_routed_cells(study) if routed else ()),
            ]
        )
    return buffer.getvalue()
