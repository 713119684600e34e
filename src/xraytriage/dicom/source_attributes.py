"""Patient and study attributes copied from a received image into our results, made valid.

Results (SC, SR) join the source's study, so they copy its patient and study attributes. Sources
from real PACS often break the VR rules (the RSNA CRs carry Patient's Age ``"19"``; AS needs
``"019Y"``), and copying such values makes *our* objects invalid, which a strict PACS may refuse.
``clean_source`` returns a copy of the source's header in which each of these attributes is
normalised when its meaning is clear (``"19"`` -> ``"019Y"``, ``"2020-01-02"`` -> ``"20200102"``,
``"m"`` -> ``"M"``, over-long text cut to the VR's length) and otherwise emptied (Type 2) or left
out (Type 3): an invalid value is never propagated.
"""

from __future__ import annotations

import copy
import datetime
import re

from pydicom import Dataset
from pydicom.config import RAISE
from pydicom.datadict import dictionary_VR
from pydicom.multival import MultiValue
from pydicom.valuerep import MAX_VALUE_LEN, validate_value

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

TYPE2 = frozenset(
    {
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
        "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    }
)  # fmt: skip
"""Type 2 in the Patient and General Study modules: kept, empty, when the value is invalid."""

PATIENT_STUDY_KEYWORDS = (
    *sorted(TYPE2),
    # Patient module (Type 3)
    "IssuerOfPatientID", "TypeOfPatientID", "PatientBirthTime", "OtherPatientNames",
    "EthnicGroup", "PatientComments", "PatientSpeciesDescription", "ResponsiblePerson",
    "PatientIdentityRemoved", "DeidentificationMethod",
    # General Study and Patient Study modules (Type 3)
    "StudyDescription", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "AdmittingDiagnosesDescription", "PatientAge", "PatientSize", "PatientWeight",
    "Occupation", "AdditionalPatientHistory", "PatientSexNeutered", "SmokingStatus",
    "PregnancyStatus",
)  # fmt: skip
"""What highdicom copies from the source's Patient and Study modules into SC and SR results."""

ENUMERATED = {
    "PatientSex": {"M", "F", "O"},
    "TypeOfPatientID": {"TEXT", "RFID", "BARCODE"},
    "PatientIdentityRemoved": {"YES", "NO"},
    "PatientSexNeutered": {"ALTERED", "UNALTERED"},
    "SmokingStatus": {"YES", "NO", "UNKNOWN"},
}

_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)[A-Z]*\s*$")


def normalize_age(value: object) -> str:
    """An Age String (``"nnnD|W|M|Y"``) from a valid-looking age, else ``""``.

    ``"19"`` -> ``"019Y"`` (a bare number is read as years, as in the RSNA and other legacy
    files), ``"6M"`` -> ``"006M"``, ``"45 Y"`` / ``"45years"`` -> ``"045Y"``; ``"abc"``, ``"-3"``
    or an age over 150 years -> ``""``.
    """
    match = _AGE.match(str(value or "").upper())
    if match is None:
        return ""
    number, unit = int(match.group(1)), match.group(2) or "Y"
    if unit == "Y" and number > 150:
        return ""
    return f"{number:03d}{unit}"


def normalize_date(value: object) -> str:
    """A DA ``YYYYMMDD`` from ``"2020-01-02"``, ``"2020.01.02"`` or ``"20200102"``; ``""`` when it
    is not a real calendar date."""
    digits = re.sub(r"[-./\s]", "", str(value or ""))
    try:
        datetime.datetime.strptime(digits, "%Y%m%d")
    except ValueError:
        return ""
    return digits


def normalize_time(value: object) -> str:
    """A TM from ``"12:30:05"`` (the ACR-NEMA form with colons) or a valid TM."""
    return str(value or "").strip().replace(":", "")


def _normalize_one(keyword: str, vr: str, value: object) -> object:
    if value is None or value == "":
        return value
    if vr == "AS":
        return normalize_age(value)
    if vr == "DA":
        return normalize_date(value)
    if vr == "TM":
        return normalize_time(value)
    if vr == "CS":
        text = str(value).strip().upper()
        allowed = ENUMERATED.get(keyword)
        return text if allowed is None or text in allowed else ""
    if vr == "DS":
        try:
            number = float(str(value).strip())
        except ValueError:
            return ""
        return f"{number:.10g}"[:16]
    if vr in ("LO", "SH", "LT", "ST"):
        return str(value).strip()[: MAX_VALUE_LEN.get(vr, 64)]
    return value


def _is_valid(vr: str, value: object) -> bool:
    values = value if isinstance(value, (list, MultiValue)) else [value]
    try:
        for item in values:
            validate_value(vr, item, RAISE)
    except (ValueError, TypeError):
        return False
    return True


def clean_source(source: Dataset) -> Dataset:
    """A copy of ``source`` without pixel data whose patient/study attributes are valid.

    Each of :data:`PATIENT_STUDY_KEYWORDS` is normalised (see the module doc); one that is still
    invalid is emptied when it is Type 2 and dropped otherwise. Everything else is copied as is.
    """
    clean = Dataset()
    for element in source:
        if element.keyword not in PIXEL_KEYWORDS:
            clean.add(copy.deepcopy(element))
    if getattr(source, "file_meta", None) is not None:
        clean.file_meta = copy.deepcopy(source.file_meta)
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword not in clean:
            continue
        vr = dictionary_VR(keyword)
        try:
            value = clean[keyword].value
        except (ValueError, TypeError, OverflowError):  # a raw value pydicom cannot convert
            value = None
        if isinstance(value, (list, MultiValue)):
            fixed: object = [_normalize_one(keyword, vr, v) for v in value]
            fixed = [v for v in fixed if v not in (None, "")]
        else:
            fixed = _normalize_one(keyword, vr, value)
        if fixed in (None, "", []) or not _is_valid(vr, fixed):
            if keyword in TYPE2:
                clean[keyword].value = None
            else:
                del clean[keyword]
            continue
        clean[keyword].value = fixed
    return clean
