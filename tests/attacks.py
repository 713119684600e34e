"""Hostile inputs for the service's denial-of-service tests and ``bench/bench_attacks.py``.

Each builder writes a small file that declares (or expands to) far more pixels than its size
suggests, starting from the real SIIM chest CR header in ``../shared/data/dicom`` where a
DICOM header is needed.

- :func:`big_png`: a few tens of KB of PNG that decodes to ``side x side`` pixels.
- :func:`deflate_bomb`: a Deflated Explicit VR Little Endian DICOM whose zero frames inflate
  to ``rows x cols x frames x 2`` bytes (written by streaming, never held in memory).
- :func:`rle_bomb`: an RLE Lossless DICOM of ``frames`` zero frames (64:1 per run).
- :func:`poison_png`: a normal radiograph carrying a marker chunk that the test launcher
  (:mod:`poison_server`) kills the server on, like a codec that segfaults.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
from PIL import Image, PngImagePlugin
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless, generate_uid

POISON_MARKER = b"xraytriage-poison-pill"


def big_png(path: Path, side: int, bits: int = 8) -> Path:
    """A ``side x side`` PNG: black with one bright block (compresses to almost nothing)."""
    dtype = np.uint16 if bits == 16 else np.uint8
    array = np.zeros((side, side), dtype=dtype)
    array[side // 8 : side // 3, side // 6 : side // 2] = np.iinfo(dtype).max // 2
    Image.fromarray(array).save(path, compress_level=9)
    return path


def poison_png(source: Path, path: Path) -> Path:
    """``source`` re-saved with a text chunk holding :data:`POISON_MARKER`."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", POISON_MARKER.decode())
    with Image.open(source) as image:
        image.save(path, pnginfo=info)
    return path


def _header(shared_data: Path, rows: int, cols: int, frames: int) -> pydicom.Dataset:
    """The SIIM chest CR header (no pixels), resized to a 16-bit ``frames`` x rows x cols image."""
    ds = pydicom.dcmread(shared_data / "dicom" / "siim_cr_chest_pa.dcm", stop_before_pixels=True)
    ds.Rows, ds.Columns = rows, cols
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    return ds


def _file_meta(ds: pydicom.Dataset, syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = generate_uid()
    return meta


def deflate_bomb(
    shared_data: Path,
    path: Path,
    rows: int = 1024,
    cols: int = 1024,
    frames: int = 200,
    pixel_bytes: int | None = None,
) -> Path:
    """Deflated DICOM whose pixel data inflates to ``rows*cols*frames*2`` bytes (or to
    ``pixel_bytes``: a header that lies about what follows)."""
    ds = _header(shared_data, rows, cols, frames)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    length = rows * cols * frames * 2 if pixel_bytes is None else pixel_bytes
    compressor = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    with path.open("wb") as fh:
        fh.write(b"\0" * 128 + b"DICM")
        meta = DicomBytesIO()
        meta.is_little_endian, meta.is_implicit_VR = True, False
        write_file_meta_info(meta, _file_meta(ds, DeflatedExplicitVRLittleEndian))
        fh.write(meta.getvalue())
        fh.write(compressor.compress(body.getvalue()))
        fh.write(compressor.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)))
        chunk = bytes(16 << 20)
        left = length
        while left:
            step = min(left, len(chunk))
            fh.write(compressor.compress(chunk[:step] if step < len(chunk) else chunk))
            left -= step
        fh.write(compressor.flush())
    return path


def _rle_zero_frame(rows: int, cols: int) -> bytes:
    """One 16-bit all-zero frame in RLE Lossless: 2 segments, each row runs of 128 zeros."""
    row = b"".join(
        bytes([257 - min(128, cols - x) if min(128, cols - x) > 1 else 0, 0]) for x in range(0, cols, 128)
    )
    segment = row * rows
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    return header + segment + segment


def rle_bomb(shared_data: Path, path: Path, rows: int = 2048, cols: int = 2048, frames: int = 30) -> Path:
    """RLE Lossless DICOM of ``frames`` zero frames: ~1/64 of the decoded size on disk."""
    ds = _header(shared_data, rows, cols, frames)
    frame = _rle_zero_frame(rows, cols)
    ds.PixelData = encapsulate([frame] * frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta = _file_meta(ds, RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- measuring and replaying ----------------------------------------------------------------


def memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` (now) and ``VmHWM`` (peak since start) of a process, in MB, from /proc."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return {"rss": values["VmRSS"], "peak": values["VmHWM"]}


def multipart_stream(filename: str, size: int, boundary: str = "xraytriage-attack") -> Iterator[bytes]:
    """A ``multipart/form-data`` body with one ``files`` part of ``size`` bytes (a PNG
    signature, then zeros), generated on the fly so the client holds 1 MB at a time."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{filename}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + b"\x89PNG\r\n\x1a\n"
    chunk = bytes(1 << 20)
    left = size - 8
    while left > 0:
        yield chunk[: min(left, len(chunk))]
        left -= len(chunk)
    yield f"\r\n--{boundary}--\r\n".encode()


def upload_stream(http: httpx.Client, filename: str, size: int) -> httpx.Response:
    boundary = "xraytriage-attack"
    return http.post(
        "/api/v1/images",
        content=multipart_stream(filename, size, boundary),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


def concurrent_gets(base_url: str, path: str, count: int, headers: dict | None = None) -> list[int]:
    """``count`` simultaneous GETs of one URL (threads released together); their statuses."""
    statuses: list[int] = [0] * count
    barrier = threading.Barrier(count)

    def get(i: int) -> None:
        with httpx.Client(base_url=base_url, headers=headers or {}, timeout=300) as http:
            barrier.wait()
            statuses[i] = http.get(path).status_code

    threads = [threading.Thread(target=get, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses
