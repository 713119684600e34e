"""Triage results as DICOM objects in the source study (new series), for a PACS to display.

* ``build_secondary_capture``: the heatmap overlay as an RGB Secondary Capture (Modality OT)
  with a black caption band burned in on top, always starting "NOT FOR DIAGNOSTIC USE".
* ``build_structured_report``: a Comprehensive SR following TID 1500 (Measurement Report), in
  the spirit of the IHE AI Results profile: the model is the device observer, one measurement
  group per finding holds its probability, its operating threshold and whether it is flagged;
  VerificationFlag is UNVERIFIED and a comment states that this is an unverified AI result.

Findings are coded in SNOMED CT where a concept says what the label means
(:data:`SNOMED_FINDINGS`, with where each code was checked); a label without one (Infiltration,
Pleural Thickening, Hernia: NIH's terms are looser than any single concept) keeps a code in the
local scheme ``99XRAYTRIAGE`` (private schemes start with "99", PS3.16 8.1) with the label as
meaning. Every group's tracking identifier is the model's own label, whichever code it has.

The report also states the study's triage tier (critical | flagged | routine), the reason for
its flag, and its out-of-distribution score when the model gives one. A routed study
(docs/routing.md) also names the body part the router gave it (Target Region, coded in SNOMED
CT: :data:`SNOMED_BODY_PARTS`); its device observer is the model that scored it (the fracture
model for a hand film, whose Fracture finding is SNOMED CT "Fracture of bone").
"""

from __future__ import annotations

import contextlib
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from xraytriage.dicom.object_filter import CHEST_BODY_PARTS, normalize_body_part
from xraytriage.dicom.source_attributes import clean_source
from xraytriage.labels import canonical_label

MANUFACTURER = "xraytriage"
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
LOCAL_SCHEME = "99XRAYTRIAGE"
AI_STATEMENT = (
    "AI result produced automatically by {model}; NOT VERIFIED by a physician. "
    "Not for diagnostic use: triage aid only."
)

PLAIN_CHEST_XRAY = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
PLAIN_RADIOGRAPHY = hd.sr.CodedConcept(*codes.SCT.PlainRadiography[:3])
OPERATING_THRESHOLD = hd.sr.CodedConcept("OPERATING_THRESHOLD", LOCAL_SCHEME, "Operating threshold")
FLAGGED = hd.sr.CodedConcept("AT_OR_ABOVE_THRESHOLD", LOCAL_SCHEME, "At or above operating threshold")
TRIAGE_TIER = hd.sr.CodedConcept("TRIAGE_TIER", LOCAL_SCHEME, "Triage tier")
FLAG_REASON = hd.sr.CodedConcept("FLAG_REASON", LOCAL_SCHEME, "Reason for flag")
OOD_SCORE = hd.sr.CodedConcept("OOD_SCORE", LOCAL_SCHEME, "Out-of-distribution score")
TARGET_REGION = hd.sr.CodedConcept(*codes.DCM.TargetRegion[:3])
SNOMED_BODY_PARTS: dict[str, hd.sr.CodedConcept] = {
    # the router's body parts (DICOM BodyPartExamined terms) -> the SNOMED CT concepts PS3.16
    # CID 4031 (Common Anatomic Regions) pairs with them, as shipped in pydicom's dictionary
    "CHEST": hd.sr.CodedConcept(*codes.SCT.Chest[:3]),
    "HAND": hd.sr.CodedConcept(*codes.SCT.Hand[:3]),
    "LEG": hd.sr.CodedConcept(*codes.SCT.LowerLeg[:3]),
    "HIP": hd.sr.CodedConcept(*codes.SCT.Hip[:3]),
    "SHOULDER": hd.sr.CodedConcept(*codes.SCT.Shoulder[:3]),
}
TIERS = {
    "critical": hd.sr.CodedConcept("CRITICAL", LOCAL_SCHEME, "Critical: read now"),
    "flagged": hd.sr.CodedConcept("FLAGGED", LOCAL_SCHEME, "Flagged"),
    "routine": hd.sr.CodedConcept("ROUTINE", LOCAL_SCHEME, "Routine"),
}

SNOMED_FINDINGS: dict[str, tuple[str, str]] = {
    # label: (SNOMED CT concept id, meaning). Checked against DICOM PS3.16 (as shipped in
    # pydicom's concept dictionary, pydicom.sr._concepts_dict) where DICOM uses the concept:
    "Pneumothorax": ("36118008", "Pneumothorax"),  # PS3.16 CID 6102, 6105 (chest findings)
    "Effusion": ("60046008", "Pleural effusion"),  # PS3.16 CID 645
    "Edema": ("19242006", "Pulmonary edema"),  # PS3.16 CID 3700
    "Mass": ("4147007", "Mass"),  # PS3.16 CID 6102 (chest findings), 6104
    "Nodule": ("27925004", "Nodule"),  # PS3.16 CID 6102 (chest findings), 6104
    # and, where PS3.16 has no chest use of the concept, the SNOMED CT International release's
    # concept of that name (fully specified name in brackets), found the same in independent
    # public code lists that map the ChestX-ray14 labels:
    "Atelectasis": ("46621007", "Atelectasis"),  # Atelectasis (disorder)
    "Cardiomegaly": ("8186001", "Cardiomegaly"),  # Cardiomegaly (disorder)
    "Pneumonia": ("233604007", "Pneumonia"),  # Pneumonia (disorder)
    "Consolidation": ("95436008", "Lung consolidation"),  # Lung consolidation (disorder)
    "Emphysema": ("87433001", "Pulmonary emphysema"),  # Pulmonary emphysema (disorder)
    "Fibrosis": ("51615001", "Pulmonary fibrosis"),  # Fibrosis of lung (disorder)
    # the fracture model (FracAtlas: any fracture of hand, leg, hip or shoulder bones):
    "Fracture": ("125605004", "Fracture of bone"),  # Fracture of bone (disorder)
}
"""Findings with a SNOMED CT code. Infiltration (no single concept: NIH's "infiltration"
covers several opacities), Pleural Thickening and Hernia (NIH's label is mostly, not only,
hiatus hernia) are left to the private scheme rather than coded as something they may not be."""
ABNORMAL_NAME = "Abnormal"


@dataclass(frozen=True)
class ModelInfo:
    """The model that produced the result: reported as the SR's device observer and in SC headers."""

    name: str
    version: str

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def device_uid(self) -> str:
        """A stable UID per model name and version (same model, same device observer UID)."""
        return generate_uid(entropy_srcs=[MANUFACTURER, self.name, self.version])


@dataclass(frozen=True)
class FindingResult:
    """One finding's probability and the operating threshold it is flagged at."""

    name: str
    probability: float
    threshold: float

    def __post_init__(self) -> None:
        for what, value in (("probability", self.probability), ("threshold", self.threshold)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"finding {self.name!r}: {what} {value} is not in [0, 1]")

    @property
    def flagged(self) -> bool:
        return self.probability >= self.threshold


# --------------------------------------------------------------------------- secondary capture


@contextlib.contextmanager
def _quiet_person_names() -> Iterator[None]:
    """highdicom warns when a PatientName has one component; PACS data often do, and the warning
    would put the name into the logs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        yield


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def caption_lines(caption: str) -> list[str]:
    """The caption as burned in: "NOT FOR DIAGNOSTIC USE" first, then the caption itself."""
    text = " ".join(caption.split())
    if text.upper().startswith(NOT_FOR_DIAGNOSTIC_USE):
        text = text[len(NOT_FOR_DIAGNOSTIC_USE) :].lstrip(" -:.,")
    return [NOT_FOR_DIAGNOSTIC_USE, *([text] if text else [])]


def burn_caption(overlay_rgb: np.ndarray, caption: str) -> np.ndarray:
    """A black band with the caption in white, stacked on top of the overlay (which stays whole)."""
    if overlay_rgb.ndim != 3 or overlay_rgb.shape[2] != 3 or overlay_rgb.dtype != np.uint8:
        raise ValueError(
            f"overlay must be an (H, W, 3) uint8 array, got {overlay_rgb.dtype} {overlay_rgb.shape}"
        )
    width = overlay_rgb.shape[1]
    size = max(10, width // 40)
    font = _font(size)
    margin = max(4, size // 3)
    char_width = max(1.0, font.getlength("M") * 0.8)
    lines: list[str] = []
    for line in caption_lines(caption):
        lines.extend(textwrap.wrap(line, max(8, int((width - 2 * margin) / char_width))) or [""])
    line_height = int(size * 1.3)
    band = Image.new("RGB", (width, 2 * margin + line_height * len(lines)), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        colour = (255, 255, 0) if i == 0 else (255, 255, 255)  # the warning stands out in yellow
        draw.text((margin, margin + i * line_height), line, fill=colour, font=font)
    return np.concatenate([np.asarray(band, dtype=np.uint8), overlay_rgb], axis=0)


def _patient_orientation(source: Dataset) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    if value is not None and not isinstance(value, str) and len(value) == 2 and all(value):
        return str(value[0]), str(value[1])
    return None


def _image_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def build_secondary_capture(
    source: Dataset,
    overlay_rgb: np.ndarray,
    caption: str,
    series_instance_uid: str,
    series_number: int,
    instance_number: int,
    model: ModelInfo,
    jpeg: bool = False,
) -> Dataset:
    """An RGB Secondary Capture of ``overlay_rgb`` with ``caption`` burned in, in the source's study.

    Patient and study attributes come from ``source``; the source image is referenced in
    SourceImageSequence. Uncompressed (Explicit VR Little Endian, what every PACS accepts) by
    default; ``jpeg`` writes lossy JPEG Baseline (YBR_FULL_422, flagged LossyImageCompression
    01), about 10-20 times smaller, for a PACS that accepts it.
    """
    pixels = burn_caption(overlay_rgb, caption)
    source = clean_source(source)
    orientation = _patient_orientation(source)
    with _quiet_person_names():
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=pixels,
            photometric_interpretation="YBR_FULL_422" if jpeg else "RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=generate_uid(),
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            patient_orientation=orientation or ("L", "F"),
            transfer_syntax_uid=JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian,
            manufacturer_model_name=model.name[:64],
            software_versions=model.version[:64],
            series_description=f"AI heatmaps ({NOT_FOR_DIAGNOSTIC_USE.lower()})"[:64],
        )
    if orientation is None:
        sc.PatientOrientation = None  # unknown in the source: leave empty (type 2) rather than guess
    if jpeg:
        sc.LossyImageCompression = "01"
        sc.LossyImageCompressionMethod = "ISO_10918_1"
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.ImageComments = " ".join(caption_lines(caption))[:10240]
    sc.DerivationDescription = f"Heatmap overlay by {model.label} ({MANUFACTURER}); {NOT_FOR_DIAGNOSTIC_USE}"[
        :1024
    ]
    sc.SourceImageSequence = [_image_reference(source)]
    sc.Laterality = series_laterality(source)
    return sc


def series_laterality(source: Dataset) -> str | None:
    """General Series Laterality (Type 2C: the SC has no Image Laterality, so it must be present):
    the source's ``R`` or ``L`` (Image Laterality first), else empty. Image Laterality's ``B``
    (both) and ``U`` (unpaired) have no Laterality equivalent, so they stay empty too."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(source.get(keyword, "") or "").strip().upper()
        if value in ("R", "L"):
            return value
    return None


# --------------------------------------------------------------------------- structured report

_TYPE2_FOR_EVIDENCE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _evidence_copy(source: Dataset) -> Dataset:
    """The source without pixels, its patient/study attributes made valid (``clean_source``), with
    absent type-2 ones present but empty (highdicom reads them unconditionally; PACS objects
    sometimes omit them)."""
    ds = clean_source(source)
    for keyword in _TYPE2_FOR_EVIDENCE:
        if keyword not in ds:
            setattr(ds, keyword, None)
    return ds


def _library_possible(evidence: Sequence[Dataset]) -> bool:
    """Whether highdicom can describe the sources in an Image Library (TID 1600, optional in
    TID 1500): it needs rows, columns and, for radiographs, patient orientation and imager pixel
    spacing, which many radiographs leave empty. The groups reference the sources either way."""
    try:
        hd.sr.ImageLibrary(evidence)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return False
    return True


def _local_code(name: str) -> hd.sr.CodedConcept:
    value = "_".join("".join(ch if ch.isalnum() else " " for ch in name.upper()).split())
    return hd.sr.CodedConcept(value or "UNNAMED", LOCAL_SCHEME, name[:64])


def finding_code(name: str) -> hd.sr.CodedConcept:
    """The SNOMED CT concept of a finding label when it has one, else the private code."""
    known = SNOMED_FINDINGS.get(canonical_label(name))
    return hd.sr.CodedConcept(known[0], "SCT", known[1]) if known else _local_code(name)


def procedure_for(sources: Sequence[Dataset], body_part: str | None = None) -> hd.sr.CodedConcept:
    """Plain chest X-ray when any source is a chest (or says nothing), else plain radiography;
    a routed ``body_part`` (the router's decision) decides over the headers."""
    if body_part:
        return PLAIN_CHEST_XRAY if normalize_body_part(body_part) in CHEST_BODY_PARTS else PLAIN_RADIOGRAPHY
    parts = {normalize_body_part(ds.get("BodyPartExamined", "")) for ds in sources}
    if parts & (CHEST_BODY_PARTS | {""}):
        return PLAIN_CHEST_XRAY
    return PLAIN_RADIOGRAPHY


def _probability(value: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=codes.DCM.Probability, value=round(float(value), 6), unit=codes.UCUM.NoUnits
    )


def _group(
    name: str,
    probability: float,
    threshold: float | None,
    model: ModelInfo,
    sources: Sequence[Dataset],
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    measurements = [_probability(probability)]
    evaluations = []
    if threshold is not None:
        measurements.append(
            hd.sr.Measurement(
                name=OPERATING_THRESHOLD, value=round(float(threshold), 6), unit=codes.UCUM.NoUnits
            )
        )
        flagged = codes.SCT.Yes if probability >= threshold else codes.SCT.No
        evaluations.append(hd.sr.QualitativeEvaluation(name=FLAGGED, value=flagged))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=name[:64]),
        finding_type=_local_code(name) if name == ABNORMAL_NAME else finding_code(name),
        algorithm_id=hd.sr.AlgorithmIdentification(name=model.name[:64], version=model.version[:64]),
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources],
    )


def build_structured_report(
    sources: Sequence[Dataset],
    findings: Sequence[FindingResult],
    model: ModelInfo,
    series_instance_uid: str,
    series_number: int,
    instance_number: int,
    abnormal: float | None = None,
    tier: str | None = None,
    flag_reason: str = "",
    ood_score: float | None = None,
    body_part: str | None = None,
) -> Dataset:
    """A TID 1500 Comprehensive SR of ``findings`` for the images ``sources`` (same study).

    One measurement group per finding (Probability, Operating threshold, At or above operating
    threshold: Yes/No) plus one for the abnormal score when given; the study's triage tier,
    the reason for its flag and its OOD score when given; the routed ``body_part`` (``HAND``,
    ``CHEST+HAND``...) as Target Region items; UNVERIFIED, PRELIMINARY.
    """
    if tier is not None and tier not in TIERS:
        raise ValueError(f"triage tier {tier!r} is not one of {', '.join(TIERS)}")
    if not sources:
        raise ValueError("a structured report needs at least one source image")
    if not findings and abnormal is None:
        raise ValueError("a structured report needs at least one finding or the abnormal score")
    evidence = [_evidence_copy(ds) for ds in sources]
    groups = [_group(f.name, f.probability, f.threshold, model, evidence) for f in findings]
    if abnormal is not None:
        if not 0.0 <= float(abnormal) <= 1.0:
            raise ValueError(f"abnormal score {abnormal} is not in [0, 1]")
        groups.append(_group(ABNORMAL_NAME, abnormal, None, model, evidence))
    with _quiet_person_names():
        return _comprehensive_sr(
            evidence, sources, groups, model, series_instance_uid, series_number, instance_number,
            [*_body_part_items(body_part), *_study_items(tier, flag_reason, ood_score)],
            procedure=procedure_for(sources, (body_part or "").split("+")[0] or None),
        )  # fmt: skip


def _body_part_items(body_part: str | None) -> list:
    """One Target Region (CODE) per routed body part; a part without a SNOMED concept here
    keeps a private code rather than none."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    parts = [p for p in (body_part or "").split("+") if p]
    return [
        hd.sr.CodeContentItem(
            name=TARGET_REGION, value=SNOMED_BODY_PARTS.get(p, _local_code(p)), relationship_type=contains
        )
        for p in dict.fromkeys(parts)
    ]


def _study_items(tier: str | None, flag_reason: str, ood_score: float | None) -> list:
    """The study-level content items: tier (CODE), reason for the flag (TEXT), OOD score (NUM)."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list = []
    if tier is not None:
        items.append(hd.sr.CodeContentItem(name=TRIAGE_TIER, value=TIERS[tier], relationship_type=contains))
    if flag_reason:
        items.append(
            hd.sr.TextContentItem(name=FLAG_REASON, value=flag_reason[:1024], relationship_type=contains)
        )
    if ood_score is not None:
        items.append(
            hd.sr.NumContentItem(
                name=OOD_SCORE,
                value=round(float(ood_score), 6),
                unit=codes.UCUM.NoUnits,
                relationship_type=contains,
            )
        )
    return items


def _comprehensive_sr(
    evidence: Sequence[Dataset],
    sources: Sequence[Dataset],
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations],
    model: ModelInfo,
    series_instance_uid: str,
    series_number: int,
    instance_number: int,
    study_items: Sequence = (),
    procedure: hd.sr.CodedConcept | None = None,
) -> Dataset:
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=model.device_uid,
                name=model.label[:64],
                manufacturer_name=MANUFACTURER,
                model_name=model.name[:64],
            ),
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=procedure or procedure_for(sources),
        imaging_measurements=groups,
        referenced_images=evidence if _library_possible(evidence) else None,
    )
    report[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.DCM.Comment,
            value=AI_STATEMENT.format(model=f"{MANUFACTURER} {model.label}"),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    report[0].ContentSequence.extend(study_items)
    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"AI findings {model.label} (UNVERIFIED)"[:64],
        manufacturer_model_name=model.name[:64],
        software_versions=model.version[:64],
    )
