"""Pixel limits from the header, bounded inflation of deflated DICOM, and reduced decoding.

Memory is measured with tracemalloc (Python and numpy allocations: pydicom's inflation and
pixel buffers), so a refusal that came after expanding the bomb would show.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attacks import big_png, deflate_bomb, rle_bomb
from xraytriage.errors import ImageTooLargeError
from xraytriage.io import read_radiograph
from xraytriage.io.dicom import read_dicom_header
from xraytriage.io.limits import block_mean, check_pixel_budget, reduction_factor


def peak_mb(call) -> tuple[object, float]:
    tracemalloc.start()
    try:
        try:
            result = call()
        except Exception as exc:  # the refusal is the result
            result = exc
        return result, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_budget_counts_frames_samples_and_bits() -> None:
    check_pixel_budget("a.dcm", 4000, 4000, 20_000_000, bits=16)
    with pytest.raises(ImageTooLargeError, match=r"a\.dcm: declares 4000x4000 = 16,000,000 pixels"):
        check_pixel_budget("a.dcm", 4000, 4000, 10_000_000)
    with pytest.raises(ImageTooLargeError, match=r"x 40 frame\(s\) x 1 sample\(s\) x 16 bits"):
        check_pixel_budget("b.dcm", 2000, 2000, 20_000_000, frames=40, bits=16)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_deflate_bomb_is_refused_without_inflating(shared_data: Path, tmp_path: Path, as_bytes: bool) -> None:
    bomb = deflate_bomb(shared_data, tmp_path / "bomb.dcm")  # 1.8 MB -> 419 MB
    source = bomb.read_bytes() if as_bytes else bomb
    error, peak = peak_mb(lambda: read_dicom_header(source, 60_000_000, name="bomb.dcm"))
    assert isinstance(error, ImageTooLargeError) and "bomb.dcm" in str(error) and "200 frame(s)" in str(error)
    assert peak < 40, f"{peak:.0f} MB allocated to refuse a bomb"
    error, peak = peak_mb(lambda: read_radiograph(bomb))
    assert isinstance(error, ImageTooLargeError) and peak < 40


def test_rle_bomb_is_refused_from_its_header(shared_data: Path, tmp_path: Path) -> None:
    bomb = rle_bomb(shared_data, tmp_path / "rle.dcm")  # 3.9 MB -> 251 MB
    error, peak = peak_mb(lambda: read_radiograph(bomb))
    assert isinstance(error, ImageTooLargeError) and "30 frame(s)" in str(error)
    assert peak < 40


def test_deflated_data_beyond_what_the_header_declares_is_refused(shared_data: Path, tmp_path: Path) -> None:
    """A header declaring one small frame followed by a pixel element that inflates to 200 MB."""
    path = deflate_bomb(
        shared_data, tmp_path / "liar.dcm", rows=64, cols=64, frames=1, pixel_bytes=200 * 2**20
    )
    error, peak = peak_mb(lambda: read_radiograph(path))
    assert isinstance(error, ImageTooLargeError) and "inflates to more than" in str(error)
    assert peak < 40


def test_legitimate_deflated_and_multiframe_files_still_read(shared_data: Path, tmp_path: Path) -> None:
    deflated = read_radiograph(deflate_bomb(shared_data, tmp_path / "d.dcm", rows=300, cols=200, frames=2))
    assert deflated.pixels.shape == (300, 200) and deflated.meta["frames"] == 2
    rle = read_radiograph(rle_bomb(shared_data, tmp_path / "r.dcm", rows=256, cols=256, frames=3))
    assert rle.pixels.shape == (256, 256) and rle.meta["frames"] == 3


def test_reduced_decode_keeps_small_images_exact_and_shrinks_large_ones(
    shared_data: Path, tmp_path: Path
) -> None:
    dicom = shared_data / "dicom" / "siim_cr_chest_pa.dcm"
    full = read_radiograph(dicom)
    assert np.array_equal(read_radiograph(dicom, max_side=1024).pixels, full.pixels)  # not over 2x
    reduced = read_radiograph(dicom, max_side=256)
    assert reduced.pixels.shape == (256, 256) and reduced.meta["reduced_by"] == 4
    assert reduced.meta["width"] == full.width
    # the same picture as a box average of the full read (the full-range window is taken on
    # the averaged values, so the levels shift a little)
    assert np.corrcoef(reduced.pixels.ravel(), block_mean(full.pixels, 4).ravel())[0, 1] > 0.99

    png = big_png(tmp_path / "big.png", 7700)
    image = read_radiograph(png, max_side=1024)
    assert image.pixels.shape == (1100, 1100) and (image.meta["width"], image.meta["height"]) == (7700, 7700)
    array = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    Image.fromarray(array).save(tmp_path / "deep.png")
    deep = read_radiograph(tmp_path / "deep.png", max_side=16)
    assert deep.pixels.shape == (16, 22) or deep.pixels.shape == (12, 16)
    assert deep.meta["bit_depth"] == 16


def test_reduction_factor() -> None:
    assert reduction_factor(1024, 1024, 1024) == 1
    assert reduction_factor(2047, 1000, 1024) == 1
    assert reduction_factor(7700, 7700, 1024) == 7
    assert reduction_factor(7700, 7700, None) == 1
