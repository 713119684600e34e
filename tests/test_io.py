"""Reading radiographs: PNG/JPEG (8/16-bit, every colour mode), the real DICOMs, generated
DICOMs for each step of the pixel chain, and every kind of bad input (errors name the file)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from xraytriage.errors import (
    ImageReadError,
    ImageTooLargeError,
    NoPixelDataError,
    UnreadableImageError,
    UnsupportedModalityError,
)
from xraytriage.io import ImageFormat, iter_input_files, read_radiograph

RAMP8 = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))  # 16 x 64


# --- PNG / JPEG ------------------------------------------------------------------------------
def test_png_8bit(tmp_path):
    path = tmp_path / "ramp.png"
    Image.fromarray(RAMP8, mode="L").save(path)
    image = read_radiograph(path)
    assert image.format is ImageFormat.PNG and image.pixels.dtype == np.float32
    np.testing.assert_allclose(image.pixels, RAMP8 / 255.0, atol=1e-7)
    assert image.meta["bit_depth"] == 8 and (image.width, image.height) == (64, 16)


def test_png_16bit_keeps_full_depth(tmp_path):
    values = np.linspace(0, 65535, 16 * 40).astype(np.uint16).reshape(16, 40)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = read_radiograph(path)
    assert image.meta["bit_depth"] == 16
    np.testing.assert_allclose(image.pixels, values / 65535.0, atol=1e-6)
    assert len(np.unique(image.pixels)) > 256  # not squeezed through 8 bits


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_colour_modes_become_the_same_grey_channel(tmp_path, mode):
    gray = Image.fromarray(RAMP8, mode="L")
    if mode == "P":
        img = Image.fromarray(RAMP8, mode="P")
        img.putpalette([v for i in range(256) for v in (i, i, i)])
    else:
        img = gray.convert(mode)
    path = tmp_path / f"img_{mode}.png"
    img.save(path)
    image = read_radiograph(path)
    assert image.pixels.ndim == 2
    np.testing.assert_allclose(image.pixels, RAMP8 / 255.0, atol=1 / 255 + 1e-6)


def test_transparent_pixels_become_black(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:4, :, 3] = 255  # top half opaque, bottom half transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    pixels = read_radiograph(path).pixels
    assert np.allclose(pixels[:4], 200 / 255, atol=1e-3) and np.allclose(pixels[4:], 0)


@pytest.mark.parametrize(
    ("name", "size"), [("16747_3_1.jpg", (1036, 885)), ("covid-19-pneumonia-58-prior.jpg", (2373, 2373))]
)
def test_real_rgb_jpegs(shared_data, name, size):
    path = shared_data / "other" / name
    image = read_radiograph(path)
    assert image.format is ImageFormat.JPEG
    assert (image.width, image.height) == size
    expected = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0 and image.pixels.std() > 0.05


def test_real_nih_png(shared_data):
    path = next(iter(sorted((shared_data / "nih" / "images").glob("*.png"))))
    image = read_radiograph(path)
    assert image.pixels.shape == (256, 256) and image.meta["mode"] == "L"


# --- real DICOMs -----------------------------------------------------------------------------
def test_real_jpeg_baseline_dicom(shared_data):
    image = read_radiograph(shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    assert image.format is ImageFormat.DICOM
    assert image.pixels.shape == (1024, 1024)
    assert image.pixels.min() == 0.0 and image.pixels.max() == 1.0
    meta = image.meta
    assert meta["transfer_syntax"] == "1.2.840.10008.1.2.4.50"  # JPEG Baseline
    assert meta["modality"] == "CR" and meta["view_position"] == "PA" and meta["body_part"] == "CHEST"
    assert meta["study_uid"].startswith("1.2.276.") and meta["series_uid"] and meta["sop_uid"]
    assert len({meta["study_uid"], meta["series_uid"], meta["sop_uid"]}) == 3
    assert meta["patient_id"] and meta["inverted"] is False
    # a chest radiograph: the mediastinum (centre) is brighter than the lungs beside it
    centre = image.pixels[300:700, 480:544].mean()
    lungs = np.concatenate([image.pixels[300:700, 250:350], image.pixels[300:700, 674:774]]).mean()
    assert centre > lungs


def test_real_monochrome1_is_the_inverse(shared_data):
    m2 = read_radiograph(shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    m1 = read_radiograph(shared_data / "dicom" / "cr_chest_pa_monochrome1.dcm")
    assert m1.meta["photometric"] == "MONOCHROME1" and m1.meta["inverted"] is True
    np.testing.assert_allclose(m1.pixels, 1.0 - m2.pixels, atol=1e-6)


# --- generated DICOMs ------------------------------------------------------------------------
def make_dicom(
    path: Path,
    stored: np.ndarray | None = None,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    with_pixels: bool = True,
    rows: int | None = None,
    columns: int | None = None,
    **elements,
) -> Path:
    """An uncompressed little-endian DICOM; ``elements`` are extra attributes by keyword."""
    stored = np.zeros((4, 4), np.uint16) if stored is None else stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "P1", modality, "AP", "CHEST"
    if with_pixels:
        ds.Rows, ds.Columns = rows or stored.shape[0], columns or stored.shape[1]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = stored.astype(np.uint16).tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


STORED = np.arange(0, 2000, 2000 / 64, dtype=np.float64).astype(np.uint16).reshape(8, 8)


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR, scaled to [0, 1]."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def test_rescale_then_window(tmp_path):
    path = make_dicom(
        tmp_path / "window.dcm",
        STORED,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=1000,
        WindowWidth=1001,
    )
    image = read_radiograph(path)
    expected = linear_window(STORED * 2.0 - 1000, 1000, 1001)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-5)
    assert image.meta["voi"] == "window"
    # without the rescale the same window gives something else: the modality LUT was applied
    assert not np.allclose(image.pixels, linear_window(STORED.astype(float), 1000, 1001), atol=1e-3)
    assert image.pixels.min() == 0 and image.pixels.max() == 1


def test_no_window_uses_the_full_range(tmp_path):
    image = read_radiograph(make_dicom(tmp_path / "plain.dcm", STORED))
    expected = (STORED - STORED.min()) / (STORED.max() - STORED.min())
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)


def test_monochrome1_inverts_after_the_window(tmp_path):
    window = {"WindowCenter": 600, "WindowWidth": 801}  # asymmetric w.r.t. the data range
    m2 = read_radiograph(make_dicom(tmp_path / "m2.dcm", STORED, **window)).pixels
    m1 = read_radiograph(make_dicom(tmp_path / "m1.dcm", STORED, photometric="MONOCHROME1", **window)).pixels
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    np.testing.assert_allclose(m1, 1.0 - linear_window(STORED.astype(float), 600, 801), atol=1e-5)


def test_presentation_lut_inverse(tmp_path):
    plain = read_radiograph(make_dicom(tmp_path / "a.dcm", STORED)).pixels
    inverse = read_radiograph(make_dicom(tmp_path / "b.dcm", STORED, PresentationLUTShape="INVERSE"))
    assert inverse.meta["inverted"] is True
    np.testing.assert_allclose(inverse.pixels, 1.0 - plain, atol=1e-6)
    # INVERSE accompanying MONOCHROME1 describes the same single inversion
    both = read_radiograph(
        make_dicom(tmp_path / "c.dcm", STORED, photometric="MONOCHROME1", PresentationLUTShape="INVERSE")
    ).pixels
    np.testing.assert_allclose(both, 1.0 - plain, atol=1e-6)
    identity = read_radiograph(make_dicom(tmp_path / "d.dcm", STORED, PresentationLUTShape="IDENTITY")).pixels
    np.testing.assert_allclose(identity, plain, atol=1e-6)


def test_generated_dicom_metadata(tmp_path):
    path = make_dicom(tmp_path / "meta.dcm", STORED, AccessionNumber="ACC42", PatientSex="F")
    meta = read_radiograph(path).meta
    ds = pydicom.dcmread(path)
    assert meta["sop_uid"] == ds.SOPInstanceUID and meta["study_uid"] == ds.StudyInstanceUID
    assert meta["series_uid"] == ds.SeriesInstanceUID and meta["accession"] == "ACC42"
    assert (meta["modality"], meta["view_position"], meta["body_part"]) == ("DX", "AP", "CHEST")


def test_ct_is_rejected(tmp_path):
    path = make_dicom(tmp_path / "ct.dcm", STORED, modality="CT")
    with pytest.raises(UnsupportedModalityError, match="CT") as info:
        read_radiograph(path)
    assert info.value.path == str(path) and str(path) in str(info.value)


def test_no_pixel_data_is_rejected(tmp_path):
    path = make_dicom(tmp_path / "sr.dcm", with_pixels=False)
    with pytest.raises(NoPixelDataError) as info:
        read_radiograph(path)
    assert str(path) in str(info.value)


def test_dicom_declaring_a_huge_image(tmp_path):
    path = make_dicom(tmp_path / "bomb.dcm", STORED, rows=60000, columns=60000)
    with pytest.raises(ImageTooLargeError, match="60000") as info:
        read_radiograph(path)
    assert str(path) in str(info.value)


# --- bad inputs ------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def test_png_declaring_a_huge_size(tmp_path):
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    path = tmp_path / "bomb.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageTooLargeError, match="100000x100000") as info:
        read_radiograph(path)
    assert str(path) in str(info.value)


def test_truncated_png(tmp_path, shared_data):
    source = next(iter(sorted((shared_data / "nih" / "images").glob("*.png"))))
    path = tmp_path / "cut.png"
    path.write_bytes(source.read_bytes()[:300])
    with pytest.raises(UnreadableImageError) as info:
        read_radiograph(path)
    assert info.value.path == str(path)


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
def test_truncated_jpeg_dicom(tmp_path, shared_data):
    data = (shared_data / "dicom" / "siim_cr_chest_pa.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError) as info:
        read_radiograph(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.png", b"", "empty"),
        ("notes.png", b"this is a text file, not an image\n" * 10, "not a PNG"),
        ("notes.dcm", b"this is a text file, not an image\n" * 10, "DICOM"),
    ],
)
def test_non_images(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnreadableImageError, match=message) as info:
        read_radiograph(path)
    assert info.value.path == str(path) and str(info.value).startswith(str(path))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(UnreadableImageError, match="not found") as info:
        read_radiograph(tmp_path / "nope.png")
    assert "nope.png" in str(info.value)
    with pytest.raises(UnreadableImageError, match="folder"):
        read_radiograph(tmp_path)


def test_a_batch_with_bad_files_carries_on(tmp_path, shared_data):
    good = shared_data / "dicom" / "siim_cr_chest_pa.dcm"
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("path\n")  # skipped by the folder walk
    results = {}
    for path in [good, *iter_input_files([tmp_path]), tmp_path / "missing.png"]:
        try:
            results[Path(path).name] = read_radiograph(path).pixels.shape
        except ImageReadError as exc:
            results[Path(path).name] = exc.problem
    assert results["siim_cr_chest_pa.dcm"] == (1024, 1024)
    assert "empty" in results["empty.png"] and "not found" in results["missing.png"]
    assert "labels.csv" not in results


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_tiff_pixels_are_refused(tmp_path, bad):
    """A float TIFF with NaN/inf rows was read as zeros there and scored like a blank image."""
    pixels = np.tile(np.linspace(0.0, 1000.0, 64, dtype=np.float32), (64, 1))
    pixels[10:14] = bad
    path = tmp_path / "float.tif"
    Image.fromarray(pixels, mode="F").save(path)
    with pytest.raises(UnreadableImageError, match="256 of 4,096 pixel values are not finite") as info:
        read_radiograph(path)
    assert info.value.path == str(path)
    pixels[10:14] = 5.0  # the same file without them reads fine
    Image.fromarray(pixels, mode="F").save(path)
    assert np.isfinite(read_radiograph(path).pixels).all()


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
@pytest.mark.parametrize("fraction", [0.003, 0.006, 0.5, 0.99])
def test_a_truncated_dicom_is_called_truncated(tmp_path, shared_data, fraction):
    """It was reported as "not a DICOM file": cut in the header, the meta group or the pixels."""
    from xraytriage.errors import UploadRejected
    from xraytriage.io.dicom import truncation_problem
    from xraytriage.serving.intake import inspect_upload

    data = (shared_data / "dicom" / "siim_cr_chest_pa.dcm").read_bytes()
    cut = data[: int(len(data) * fraction)]
    path = tmp_path / "cut.dcm"
    path.write_bytes(cut)
    with pytest.raises(UnreadableImageError, match=f"truncated DICOM file: it ends at byte {len(cut):,}"):
        read_radiograph(path)
    with pytest.raises(UploadRejected, match="truncated DICOM file"):
        inspect_upload(cut, "cut.dcm")
    for intact in [
        *sorted((shared_data / "dicom").rglob("*.dcm")),
        make_dicom(tmp_path / "sr.dcm", with_pixels=False),
    ]:
        assert truncation_problem(intact) is None, intact


def test_a_truncated_uncompressed_dicom_names_the_pixel_data(tmp_path):
    path = make_dicom(tmp_path / "full.dcm", np.zeros((64, 64), np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    with pytest.raises(UnreadableImageError, match=r"truncated DICOM file.*inside PixelData \(7FE0,0010\)"):
        read_radiograph(path)
