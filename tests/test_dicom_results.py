"""Secondary Capture and Structured Report results built from the real SIIM chest CR."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from pacs import (
    dciodvfy_errors,
    findings_in,
    radiograph_overlay,
    require_tools,
    run_tool,
    sr_content_items,
)
from xraytriage.dicom import FindingResult, ModelInfo, build_secondary_capture, build_structured_report
from xraytriage.dicom.results import NOT_FOR_DIAGNOSTIC_USE, burn_caption, caption_lines

MODEL = ModelInfo("densenet121-nih", "1.2.0")
FINDINGS = [
    FindingResult("Pneumothorax", 0.82, 0.40),
    FindingResult("Pleural Thickening", 0.10, 0.30),
    FindingResult("Effusion", 0.30, 0.30),  # exactly at threshold: flagged
]


@pytest.fixture(scope="module")
def source_path(shared_data):
    return shared_data / "dicom" / "siim_cr_chest_pa.dcm"


@pytest.fixture(scope="module")
def source(source_path):
    return pydicom.dcmread(source_path)


def test_caption_always_starts_with_the_warning():
    assert caption_lines("Pneumothorax 0.82") == [NOT_FOR_DIAGNOSTIC_USE, "Pneumothorax 0.82"]
    assert caption_lines("not for diagnostic use - Effusion") == [NOT_FOR_DIAGNOSTIC_USE, "Effusion"]
    with pytest.raises(ValueError, match="uint8"):
        burn_caption(np.zeros((8, 8, 3), np.float32), "x")


def test_secondary_capture_same_study_new_series_caption_burned_in(source, source_path):
    overlay = radiograph_overlay(source_path)
    series = generate_uid()
    sc = build_secondary_capture(source, overlay, "Pneumothorax 0.82 (threshold 0.40)", series, 901, 1, MODEL)
    sc = pydicom.dcmread(_roundtrip(sc))  # what a PACS would store
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.PatientID == source.PatientID and sc.PatientName == source.PatientName
    assert sc.SeriesInstanceUID == series != source.SeriesInstanceUID
    assert sc.SOPInstanceUID != source.SOPInstanceUID
    assert sc.Modality == "OT" and sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.BurnedInAnnotation == "YES"
    assert sc.ImageComments.startswith(NOT_FOR_DIAGNOSTIC_USE)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert (sc.Manufacturer, sc.ManufacturerModelName, sc.SoftwareVersions) == (
        "xraytriage",
        *MODEL.__dict__.values(),
    )
    pixels = sc.pixel_array
    band = pixels.shape[0] - overlay.shape[0]
    assert pixels.shape[1:] == overlay.shape[1:] and band > 20
    np.testing.assert_array_equal(pixels[band:], overlay)  # the overlay is kept whole below the band
    top = pixels[:band]
    assert top.max() > 200 and 0.005 < (top.max(axis=-1) > 128).mean() < 0.5  # text on black
    # the warning line is yellow (no blue), the caption line white
    assert ((top[..., 0] > 200) & (top[..., 2] < 60)).any()


def test_secondary_capture_as_jpeg_is_small_and_close(source, source_path):
    overlay = radiograph_overlay(source_path)
    plain = build_secondary_capture(source, overlay, "Pneumothorax 0.82", generate_uid(), 901, 1, MODEL)
    small = build_secondary_capture(
        source, overlay, "Pneumothorax 0.82", generate_uid(), 901, 1, MODEL, jpeg=True
    )
    plain_bytes, small_bytes = _roundtrip(plain).getvalue(), _roundtrip(small).getvalue()
    assert len(small_bytes) * 5 < len(plain_bytes)
    back = pydicom.dcmread(_roundtrip(small))
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert back.LossyImageCompression == "01" and back.LossyImageCompressionMethod == "ISO_10918_1"
    rgb = back.pixel_array  # pydicom decodes YBR_FULL_422 JPEG to RGB
    reference = plain.pixel_array.astype(np.int16)
    assert rgb.shape == reference.shape
    assert np.abs(rgb.astype(np.int16) - reference).mean() < 4  # lossy, but the same picture


def test_structured_report_lists_every_finding(source):
    series = generate_uid()
    sr = build_structured_report([source], FINDINGS, MODEL, series, 902, 1, abnormal=0.7)
    sr = pydicom.dcmread(_roundtrip(sr))
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
    assert sr.SeriesInstanceUID == series and sr.Modality == "SR"
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    found = findings_in(sr)
    assert set(found) == {"Pneumothorax", "Pleural Thickening", "Effusion", "Abnormal"}
    for finding in FINDINGS:
        assert found[finding.name]["Probability"] == pytest.approx(finding.probability)
        assert found[finding.name]["Operating threshold"] == pytest.approx(finding.threshold)
        assert found[finding.name]["At or above operating threshold"] == ("Yes" if finding.flagged else "No")
    assert found["Effusion"]["At or above operating threshold"] == "Yes"
    assert found["Abnormal"] == {"Probability": pytest.approx(0.7)}
    items = sr_content_items(sr)
    assert ("Device Observer Manufacturer", "xraytriage") in items
    assert ("Device Observer Name", MODEL.label) in items
    assert ("Algorithm Version", MODEL.version) in items
    assert ("Procedure reported", "Plain chest X-ray") in items
    comments = [value for name, value in items if name == "Comment"]
    assert comments and "NOT VERIFIED" in comments[0] and "AI result" in comments[0]
    assert all(value == source.SOPInstanceUID for name, value in items if name == "Source of Measurement")


def test_structured_report_parses_with_dsrdump(source, tmp_path):
    require_tools("dsrdump")
    path = tmp_path / "sr.dcm"
    build_structured_report([source], FINDINGS, MODEL, generate_uid(), 902, 1, abnormal=0.7).save_as(path)
    rc, out = run_tool("dsrdump", ["-Ee", path])  # -Ee: report every error and warning
    assert rc == 0, out
    assert not [line for line in out.splitlines() if line.startswith(("E:", "W:"))], out
    assert "Verification Flag   : UNVERIFIED" in out
    assert 'CODE:(,,"Finding")=(36118008,SCT,"Pneumothorax")' in out
    assert 'CODE:(,,"Finding")=(PLEURAL_THICKENING,99XRAYTRIAGE,"Pleural Thickening")' in out


def test_structured_report_codes_findings_in_snomed_and_states_tier_reason_and_ood(source, tmp_path):
    reason = "CRITICAL Pneumothorax 0.82 >= 0.60; Effusion 0.30 >= 0.30"
    sr = build_structured_report(
        [source], FINDINGS, MODEL, generate_uid(), 902, 1, abnormal=0.7,
        tier="critical", flag_reason=reason, ood_score=1.5,
    )  # fmt: skip
    sr = pydicom.dcmread(_roundtrip(sr))
    codes = {}
    for group in sr.ContentSequence:
        for item in group.get("ContentSequence", []):
            for inner in item.get("ContentSequence", []):
                if inner.ConceptNameCodeSequence[0].CodeMeaning == "Finding":
                    code = inner.ConceptCodeSequence[0]
                    value = code.get("CodeValue") or code.get("LongCodeValue")  # > 16 characters
                    codes[code.CodeMeaning] = (code.CodingSchemeDesignator, value)
    assert codes["Pneumothorax"] == ("SCT", "36118008")
    assert codes["Pleural effusion"] == ("SCT", "60046008")
    assert codes["Pleural Thickening"] == ("99XRAYTRIAGE", "PLEURAL_THICKENING")  # no SNOMED concept kept
    items = dict(sr_content_items(sr))
    assert items["Triage tier"] == "Critical: read now"
    assert items["Reason for flag"] == reason
    assert items["Out-of-distribution score"] == pytest.approx(1.5)
    plain = build_structured_report([source], FINDINGS, MODEL, generate_uid(), 902, 1, abnormal=0.7)
    assert "Triage tier" not in dict(sr_content_items(plain))
    with pytest.raises(ValueError, match="tier"):
        build_structured_report([source], FINDINGS, MODEL, generate_uid(), 902, 1, tier="urgent")
    require_tools("dsrdump")
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    rc, out = run_tool("dsrdump", ["-Ee", path])
    assert rc == 0 and not [line for line in out.splitlines() if line.startswith(("E:", "W:"))], out


def test_structured_report_needs_sources_and_content(source):
    with pytest.raises(ValueError):
        build_structured_report([], FINDINGS, MODEL, generate_uid(), 1, 1)
    with pytest.raises(ValueError):
        build_structured_report([source], [], MODEL, generate_uid(), 1, 1)
    with pytest.raises(ValueError, match="not in"):
        FindingResult("Mass", 1.5, 0.5)


def test_structured_report_tolerates_sources_missing_type2_attributes(source):
    bare = pydicom.Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality"):
        setattr(bare, keyword, source.get(keyword))
    bare.PatientID = "P1"
    bare.Rows = bare.Columns = 64
    bare.BodyPartExamined = "WRIST"
    sr = build_structured_report([bare], FINDINGS[:1], MODEL, generate_uid(), 1, 1)
    assert sr.PatientID == "P1" and sr.StudyInstanceUID == source.StudyInstanceUID
    assert ("Procedure reported", "Plain radiography") in sr_content_items(sr)


def real_dicoms(shared_data):
    return sorted((shared_data / "dicom").rglob("*.dcm"))


def test_results_of_every_real_dicom_pass_dciodvfy(shared_data, tmp_path):
    """dicom3tools' validator finds no error in any SC (both encodings) or SR built from the real
    files: the RSNA CRs carry Patient's Age "19" (AS needs "019Y"), which used to be copied as
    is, and the SC lacked General Series Laterality (Type 2C)."""
    sources = real_dicoms(shared_data)
    assert len(sources) >= 3
    overlay = np.zeros((48, 64, 3), np.uint8)
    errors, ages = {}, {}
    for path in sources:
        source = pydicom.dcmread(path)
        results = {
            "sc": build_secondary_capture(source, overlay, "Effusion 0.5", generate_uid(), 901, 1, MODEL),
            "sc-jpeg": build_secondary_capture(
                source, overlay, "Effusion 0.5", generate_uid(), 901, 2, MODEL, jpeg=True
            ),
            "sr": build_structured_report([source], FINDINGS, MODEL, generate_uid(), 902, 1, abnormal=0.7),
        }
        for kind, ds in results.items():
            out = tmp_path / f"{path.stem}-{kind}.dcm"
            ds.save_as(out, enforce_file_format=True)
            found = dciodvfy_errors(out)
            if found:
                errors[out.name] = found
        if "PatientAge" in source:
            ages[path.name] = (source.PatientAge, results["sr"].PatientAge)
    assert errors == {}
    for given, written in ages.values():  # "19" -> "019Y": normalised, not dropped
        assert written == f"{int(str(given).rstrip('Y')):03d}Y"


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_sc_laterality_comes_from_the_source_when_it_is_left_or_right(source):
    overlay = np.zeros((16, 16, 3), np.uint8)
    for given, expected in (("L", "L"), ("r", "R"), ("B", None), ("U", None), (None, None)):
        ref = source.copy()
        if given is not None:
            ref.ImageLaterality = given
        sc = build_secondary_capture(ref, overlay, "x", generate_uid(), 1, 1, MODEL)
        assert "Laterality" in sc and sc.Laterality == expected, given


def _roundtrip(ds):
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer
