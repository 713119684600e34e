"""Patient/study attributes copied into our results are normalised or dropped, never propagated
invalid (``xraytriage.dicom.source_attributes``)."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from xraytriage.dicom.source_attributes import clean_source, normalize_age, normalize_date


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("19", "019Y"),
        ("6", "006Y"),
        ("019Y", "019Y"),
        ("6M", "006M"),
        ("45 Y", "045Y"),
        ("45years", "045Y"),
        ("3w", "003W"),
        ("", ""),
        ("abc", ""),
        ("-3", ""),
        ("200", ""),
        ("1234Y", ""),
    ],
)
def test_normalize_age(given, expected):
    assert normalize_age(given) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [("2020-01-02", "20200102"), ("2020.01.02", "20200102"), ("20200102", "20200102"), ("20201340", "")],
)
def test_normalize_date(given, expected):
    assert normalize_date(given) == expected


@pytest.mark.filterwarnings("ignore:.*(Invalid value|exceeds the maximum length)")
def test_clean_source_fixes_what_it_can_and_drops_the_rest(shared_data):
    source = pydicom.dcmread(shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    source.PatientAge = "62"
    source.PatientSex = "m"
    source.StudyDate = "2001-02-03"
    source.StudyTime = "12:30:05"
    source.StudyDescription = "x" * 80
    weight = Tag(0x0010, 0x1030)  # DS; as read from a file (setting it would fail to convert)
    source[weight] = RawDataElement(weight, "DS", 5, b"heavy", 0, False, True)
    source.AccessionNumber = "A" * 30  # SH: 16 characters; Type 2 -> cut, not dropped
    source.PatientBirthDate = "yesterday"  # Type 2 -> emptied
    source.SmokingStatus = "MAYBE"  # not an enumerated value -> dropped
    clean = clean_source(source)
    assert clean.PatientAge == "062Y" and clean.PatientSex == "M"
    assert clean.StudyDate == "20010203" and clean.StudyTime == "123005"
    assert clean.StudyDescription == "x" * 64 and clean.AccessionNumber == "A" * 16
    assert "PatientWeight" not in clean and "SmokingStatus" not in clean
    assert "PatientBirthDate" in clean and not clean.PatientBirthDate
    assert "PixelData" not in clean and "PixelData" in source  # a copy; the source is untouched
    assert source.PatientAge == "62"
    assert clean.SOPInstanceUID == source.SOPInstanceUID and clean.PatientID == source.PatientID
