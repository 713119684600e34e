"""What a model was trained to read (its clinical scope), and whether an image is inside it.

A chest model given a hand or a lateral chest radiograph still answers with chest findings,
confidently and wrongly. The checkpoint's ``scope`` says what it was trained on, e.g.
``{"body_parts": ["CHEST"], "views": ["PA", "AP"]}`` (DICOM BodyPartExamined and
ViewPosition terms; an empty list means "any"). An image whose DICOM header names another
body part or view is out of scope: it is reported with the reason and never given findings.
A header that names neither (PNG, JPEG, DICOM without the attributes) cannot be judged and is
read as usual.

The scope may also hold ``"age_years": [min, max]``, the ages the model saw enough of in
training. A DICOM whose PatientAge lies outside (an adult model given a child) is still read,
but its row carries a warning saying so: never silently scored (:func:`age_warning`).

    problem = scope_problem(dataset_or_meta, checkpoint)   # None, or "out of scope: ..."
    warning = age_warning(meta["patient_age"], checkpoint)  # None, or "patient age ..."
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from xraytriage.labels import ABNORMAL, CHEXPERT_OBSERVATIONS, NIH_FINDINGS, NO_FINDING

CHEST_SCOPE: dict[str, list[str]] = {"body_parts": ["CHEST"], "views": ["PA", "AP"]}
MURA_BODY_PARTS = ["ELBOW", "FINGER", "FOREARM", "HAND", "HUMERUS", "SHOULDER", "WRIST"]
CHEST_DATASETS = ("nih", "chexpert")
FRACATLAS_BODY_PARTS = ["HAND", "LEG", "HIP", "SHOULDER"]

BODY_PART_ALIASES = {"THORAX": "CHEST", "LUNG": "CHEST", "LUNGS": "CHEST", "PORT CHEST": "CHEST"}
VIEW_ALIASES = {"POSTERO ANTERIOR": "PA", "ANTERO POSTERIOR": "AP", "LATERAL": "LL", "LAT": "LL"}
VIEW_NAMES = {"PA": "PA", "AP": "AP", "LL": "left lateral", "RL": "right lateral"}
LOW_RESOLUTION = "low resolution"


def default_scope(label_names: Sequence[str], train_config: Mapping[str, Any] | None = None) -> dict:
    """The scope of a checkpoint written before checkpoints recorded one: from its training
    data (NIH and CheXpert: frontal chest radiographs; MURA: its seven upper-limb parts; FracAtlas: hand, leg, hip, shoulder), else
    from its labels (chest findings: frontal chest), else none (everything in scope)."""
    data = (train_config or {}).get("data") or {}
    kind = str(data.get("kind", "") if isinstance(data, Mapping) else "").lower()
    if kind == "mura":
        return {"body_parts": list(MURA_BODY_PARTS), "views": []}
    if kind == "fracatlas":
        return {"body_parts": list(FRACATLAS_BODY_PARTS), "views": []}
    chest_labels = (set(NIH_FINDINGS) | set(CHEXPERT_OBSERVATIONS)) - {NO_FINDING, ABNORMAL}
    if kind in CHEST_DATASETS or chest_labels & set(label_names):
        return {key: list(values) for key, values in CHEST_SCOPE.items()}
    return {}


def _term(value: Any, aliases: Mapping[str, str]) -> str:
    text = re.sub(r"[^A-Z0-9]+", " ", str(value or "").upper()).strip()
    return aliases.get(text, text)


def body_part_term(value: Any) -> str:
    """A body part as scopes and routing compare it: upper case, DICOM aliases applied."""
    return _term(value, BODY_PART_ALIASES)


def _header_value(header: Any, key: str, keyword: str) -> str:
    if isinstance(header, Mapping):
        return str(header.get(key) or "")
    return str(getattr(header, keyword, "") or "")  # a pydicom Dataset


def describe_scope(scope: Mapping[str, Sequence[str]]) -> str:
    """``"CHEST radiographs, PA or AP views"``."""
    parts = scope.get("body_parts") or []
    views = scope.get("views") or []
    text = f"{'/'.join(parts)} radiographs" if parts else "radiographs"
    return text + (f", {' or '.join(views)} views" if views else "")


def scope_problem(header: Any, scope_of: Any) -> str | None:
    """Why an image is outside the model's scope, or None when it is inside or cannot be told.

    ``header``: a pydicom Dataset, or a mapping with ``body_part`` and ``view_position`` (the
    keys of :func:`xraytriage.io.dicom.dicom_metadata`). ``scope_of``: a Checkpoint or its
    ``scope`` dict. The DICOM node and the service's intake call this before accepting a file.
    """
    scope = getattr(scope_of, "scope", scope_of) or {}
    body_parts = [_term(b, BODY_PART_ALIASES) for b in scope.get("body_parts") or []]
    views = [_term(v, VIEW_ALIASES) for v in scope.get("views") or []]
    body_raw = _header_value(header, "body_part", "BodyPartExamined")
    view_raw = _header_value(header, "view_position", "ViewPosition")
    body, view = _term(body_raw, BODY_PART_ALIASES), _term(view_raw, VIEW_ALIASES)
    reasons = []
    if body and body_parts and body not in body_parts:
        reasons.append(f"body part {body_raw.strip()} (BodyPartExamined)")
    if view and views and view not in views:
        name = VIEW_NAMES.get(view, view_raw.strip())
        shown = view_raw.strip() if name == view_raw.strip() else f"{view_raw.strip()}, {name}"
        reasons.append(f"view {shown} (ViewPosition)")
    if not reasons:
        return None
    return f"out of scope: {' and '.join(reasons)}; this model reads {describe_scope(scope)} only"


def low_resolution_warning(width: int | None, height: int | None, input_size: int) -> str | None:
    """A warning for an image smaller than the model's input: the model sees it upscaled, so
    the fine detail that findings such as nodules need is not there."""
    if not width or not height or min(width, height) >= input_size:
        return None
    return f"{LOW_RESOLUTION}: {width}x{height} px, smaller than the model's {input_size} px input"


AGE_UNIT_YEARS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def age_in_years(value: Any) -> float | None:
    """DICOM AS (``"045Y"``, ``"006M"``, ``"002W"``, ``"003D"``) or a plain number of years ->
    years; None when absent or unreadable (then no age is checked)."""
    text = str(value or "").strip().upper()
    match = re.fullmatch(r"(\d{1,3})\s*([YMWD]?)", text)
    if not match:
        return None
    return int(match.group(1)) * AGE_UNIT_YEARS[match.group(2) or "Y"]


def age_range(scope_of: Any) -> tuple[float, float] | None:
    """The scope's ``age_years`` as ``(min, max)``, or None when it states none."""
    scope = getattr(scope_of, "scope", scope_of) or {}
    ages = scope.get("age_years")
    if not ages or len(ages) != 2:
        return None
    return float(ages[0]), float(ages[1])


def age_warning(patient_age: Any, scope_of: Any) -> str | None:
    """A warning when a header's PatientAge lies outside the model's age range, else None."""
    ages = age_range(scope_of)
    years = age_in_years(patient_age)
    if ages is None or years is None or ages[0] <= years <= ages[1]:
        return None
    shown = f"{years:.1f}" if years < 2 else f"{years:.0f}"
    return (
        f"patient age {shown} y (PatientAge {str(patient_age).strip()}) outside the model's "
        f"training ages {ages[0]:.0f}-{ages[1]:.0f} y: findings may not hold"
    )
