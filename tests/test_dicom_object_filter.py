"""Which objects the DICOM node triages, and the destination/AE-title parsing it is configured with."""

from __future__ import annotations

import pytest
from pydicom import Dataset

from xraytriage.dicom import check_acceptable, parse_destination
from xraytriage.dicom.object_filter import (
    CR_IMAGE_STORAGE,
    DX_FOR_PRESENTATION,
    DX_FOR_PROCESSING,
    SECONDARY_CAPTURE,
)
from xraytriage.dicom.scp import ScpConfig
from xraytriage.errors import ConfigError

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
MAMMOGRAPHY = "1.2.840.10008.5.1.4.1.1.1.2"


def _ds(sop_class: str, modality: str | None, body_part: str | None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    if modality is not None:
        ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    return ds


@pytest.mark.parametrize(
    ("sop_class", "modality", "body_part"),
    [
        (CR_IMAGE_STORAGE, "CR", "CHEST"),
        (DX_FOR_PRESENTATION, "DX", "CHEST"),
        (DX_FOR_PROCESSING, "DX", "WRIST"),
        (DX_FOR_PRESENTATION, "DX", "UPPER EXTREMITY"),
        (CR_IMAGE_STORAGE, "CR", "C_SPINE"),
        (CR_IMAGE_STORAGE, "CR", None),  # missing body part: accepted
        (CR_IMAGE_STORAGE, "CR", ""),
        (SECONDARY_CAPTURE, "CR", "CHEST"),  # digitised radiograph (SIIM ships them so)
    ],
)
def test_radiographs_of_chest_and_skeleton_are_accepted(sop_class, modality, body_part):
    assert check_acceptable(_ds(sop_class, modality, body_part)) is None


@pytest.mark.parametrize(
    ("sop_class", "modality", "body_part", "named"),
    [
        (CT_IMAGE_STORAGE, "CT", "CHEST", "CT Image Storage"),
        (MR_IMAGE_STORAGE, "MR", "KNEE", "MR Image Storage"),
        (US_IMAGE_STORAGE, "US", None, "Ultrasound"),
        (COMPREHENSIVE_SR, "SR", None, "Comprehensive SR"),
        (MAMMOGRAPHY, "MG", "BREAST", "Mammography"),
        (SECONDARY_CAPTURE, "OT", "CHEST", "modality OT"),  # e.g. our own heatmap captures
        (CR_IMAGE_STORAGE, "CR", "HEAD", "body part HEAD"),
        (DX_FOR_PRESENTATION, "DX", "ABDOMEN", "body part ABDOMEN"),
        (CR_IMAGE_STORAGE, "CT", "CHEST", "modality CT"),
        (CR_IMAGE_STORAGE, None, "CHEST", "modality missing"),
    ],
)
def test_everything_else_is_refused_with_a_reason(sop_class, modality, body_part, named):
    reason = check_acceptable(_ds(sop_class, modality, body_part))
    assert reason is not None and named in reason


def test_parse_destination():
    dest = parse_destination(" ORTHANC@127.0.0.1:4242 ")
    assert (dest.ae_title, dest.host, dest.port) == ("ORTHANC", "127.0.0.1", 4242)
    assert str(dest) == "ORTHANC@127.0.0.1:4242"
    v6 = parse_destination("PACS@[::1]:104")
    assert (v6.host, v6.port) == ("::1", 104)
    assert parse_destination("PACS@pacs.example.org:11112").host == "pacs.example.org"


@pytest.mark.parametrize(
    "text",
    ["", "ORTHANC", "127.0.0.1:4242", "@127.0.0.1:4242", "ORTHANC@127.0.0.1", "ORTHANC@:4242",
     "ORTHANC@127.0.0.1:0", "ORTHANC@127.0.0.1:70000", "ORTHANC@127.0.0.1:port",
     "A_VERY_LONG_AE_TITLE@h:1", "BAD\\AE@h:1"],
)  # fmt: skip
def test_parse_destination_rejects_bad_text_with_a_config_error(text):
    with pytest.raises(ConfigError, match="DICOM destination"):
        parse_destination(text)


def test_scp_config_validates_titles_and_port():
    config = ScpConfig(ae_title=" XRAYTRIAGE ", allowed_calling_aes=frozenset({" MODALITY1"}))
    assert config.ae_title == "XRAYTRIAGE" and config.allowed_calling_aes == {"MODALITY1"}
    for bad in (
        {"ae_title": ""},
        {"ae_title": "X" * 17},
        {"port": 70000},
        {"allowed_calling_aes": frozenset()},
    ):
        with pytest.raises(ConfigError):
            ScpConfig(**bad)
