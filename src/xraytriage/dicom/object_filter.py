"""Which received DICOM objects the node triages: CR/DX radiographs of the chest or skeleton.

The triage models are trained on projection radiographs, so anything else (CT, MR, US, SR,
mammography, a CR of the head or abdomen...) is refused at C-STORE time with a reason a PACS
administrator can act on, instead of producing a meaningless score later.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.uid import UID

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

RADIOGRAPH_SOP_CLASSES = frozenset({CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING})
"""Computed Radiography and Digital X-Ray (for presentation and for processing) storage."""

ACCEPTED_MODALITIES = frozenset({"CR", "DX"})

DIGITIZED_SOP_CLASSES = frozenset({SECONDARY_CAPTURE})
"""Secondary Capture is accepted only when its Modality says CR or DX: digitised or converted
radiographs (public data sets such as SIIM ship chest CRs this way). Our own result images are
Secondary Captures with Modality OT, so they are never re-triaged."""

CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "RIB", "RIBS", "STERNUM"})

MSK_BODY_PARTS = frozenset(
    {
        # upper limb
        "SHOULDER", "CLAVICLE", "SCAPULA", "ACJOINT", "SCJOINT", "ARM", "UPPERARM", "HUMERUS",
        "ELBOW", "FOREARM", "RADIUS", "ULNA", "WRIST", "HAND", "FINGER", "THUMB",
        "UPPEREXTREMITY", "UPPERLIMB",
        # lower limb and pelvis
        "PELVIS", "HIP", "SACROILIAC", "SIJOINT", "FEMUR", "THIGH", "KNEE", "PATELLA", "LEG",
        "LOWERLEG", "TIBIA", "FIBULA", "ANKLE", "FOOT", "HEEL", "CALCANEUS", "TOE",
        "LOWEREXTREMITY", "LOWERLIMB", "EXTREMITY",
        # spine
        "SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "SACRUM", "COCCYX", "WHOLESPINE",
    }
)  # fmt: skip
"""DICOM PS3.16 Annex L body-part terms (and common local spellings) of the skeleton."""

ACCEPTED_BODY_PARTS = CHEST_BODY_PARTS | MSK_BODY_PARTS


def normalize_body_part(value: object) -> str:
    """``"Upper Extremity"``, ``"c-spine"`` -> ``"UPPEREXTREMITY"``, ``"CSPINE"``."""
    text = "" if value is None else str(value)
    return "".join(ch for ch in text.upper() if ch.isalnum())


def sop_class_name(uid: str) -> str:
    """``"CT Image Storage (1.2.840.10008.5.1.4.1.1.2)"``; the bare UID when pydicom does not know it."""
    name = UID(uid).name if uid else ""
    return f"{name} ({uid})" if name and name != uid else (uid or "no SOP class")


def check_acceptable(ds: Dataset) -> str | None:
    """None when the object should be triaged, else why not (names SOP class/modality/body part).

    The reason leads with what is wrong so that its first 64 characters (the C-STORE
    ErrorComment limit) still say it.

    Accepted: CR Image Storage and Digital X-Ray (for presentation or processing) with Modality
    CR or DX, plus Secondary Captures whose Modality is CR or DX; BodyPartExamined of the chest
    or skeleton, or missing (many modalities leave it empty).
    """
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if sop_class not in RADIOGRAPH_SOP_CLASSES | DIGITIZED_SOP_CLASSES:
        name = UID(sop_class).name if sop_class else "no SOP class"
        return f"{name} not accepted (only CR/DX radiographs); SOP class {sop_class or 'missing'}"
    if modality not in ACCEPTED_MODALITIES:
        shown = modality or "missing"
        return f"modality {shown} not accepted (only CR/DX); {sop_class_name(sop_class)}"
    raw_part = ds.get("BodyPartExamined", "")
    body_part = normalize_body_part(raw_part)
    if body_part and body_part not in ACCEPTED_BODY_PARTS:
        return (
            f"body part {str(raw_part).strip()} not accepted "
            f"(only chest or musculoskeletal); modality {modality}"
        )
    return None
