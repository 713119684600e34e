"""Test helpers for the DICOM node: a real Orthanc on loopback ports, the dcmtk tools, SR reading.

``orthanc()`` starts ``Orthanc`` with its own temporary storage and config (no plugins, no
authentication, remote access off) and waits until its REST API answers. ``run_tool`` runs
``storescu``/``echoscu``/``dsrdump`` with a timeout and returns (returncode, output).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom

from serve_support import PORT_ATTEMPTS, PORT_IN_USE, free_port
from tool_support import skip_missing
from waiting import wait_until

ORTHANC_AE = "ORTHANC"


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).is_file()), None
    )


DEBIAN_PACKAGE = {"Orthanc": "orthanc", "dciodvfy": "dicom3tools"}
"""The Debian package of each tool (the rest come from dcmtk); scripts/install-system-deps.sh."""


def require_tools(*names: str) -> None:
    """Skip the calling test, naming what is missing and its Debian package (CI installs them)."""
    missing = [
        name for name in names if (orthanc_binary() if name == "Orthanc" else shutil.which(name)) is None
    ]
    if missing:
        packages = sorted({DEBIAN_PACKAGE.get(name, "dcmtk") for name in missing})
        skip_missing(
            f"not on PATH: {', '.join(missing)} (Debian package {', '.join(packages)}; "
            "run scripts/install-system-deps.sh)"
        )


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` and ``Abort`` lines of dicom3tools' IOD validator on one file (warnings are
    not errors). Skips the calling test when dciodvfy is not installed."""
    require_tools("dciodvfy")
    _, out = run_tool("dciodvfy", [path])
    return [line for line in out.splitlines() if line.startswith(("Error", "Abort"))]


def run_tool(tool: str, args: Sequence[str], timeout: float = 30) -> tuple[int, str]:
    """Run a dcmtk tool; (returncode, stdout + stderr). A timeout counts as returncode -9."""
    try:
        proc = subprocess.run(
            [tool, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        return -9, (out.decode(errors="replace") if isinstance(out, bytes) else str(out)) + "\n[timeout]"
    return proc.returncode, proc.stdout + proc.stderr


def storescu(
    port: int, files: Sequence[Path], calling_ae: str = "STORESCU", called_ae: str = "XRAYTRIAGE"
) -> tuple[int, str]:
    return run_tool(
        "storescu", ["-v", "-xy", "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", port, *files]
    )


def echoscu(port: int, calling_ae: str = "ECHOSCU", called_ae: str = "XRAYTRIAGE") -> tuple[int, str]:
    return run_tool("echoscu", ["-v", "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", port])


@dataclass
class OrthancServer:
    """A running Orthanc: its REST base URL, DICOM port and AE title."""

    http_port: int
    dicom_port: int
    ae_title: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.read()

    def get_json(self, path: str):
        return json.loads(self.get(path))


def _wait_ready(server: OrthancServer, proc: subprocess.Popen, deadline_s: float) -> None:
    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(
                f"Orthanc exited with {proc.returncode}: {server.log_path.read_text()[-2000:]}"
            )
        try:
            server.get_json("/system")
            return True
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            return False

    try:
        wait_until(answers, deadline_s, interval=0.1, what="Orthanc's REST API")
    except AssertionError:
        raise RuntimeError(
            f"Orthanc did not answer within {deadline_s} s: {server.log_path.read_text()[-2000:]}"
        ) from None


@contextmanager
def orthanc(
    workdir: Path, ae_title: str = ORTHANC_AE, startup_timeout: float = 30
) -> Iterator[OrthancServer]:
    """Start a private Orthanc under ``workdir`` on free loopback ports; stop it on exit."""
    binary = orthanc_binary()
    if binary is None:
        skip_missing("Orthanc is not installed (Debian package orthanc)")
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(PORT_ATTEMPTS):  # another process may take a free port before Orthanc binds it
        server, proc = _start_orthanc(binary, workdir, ae_title)
        try:
            _wait_ready(server, proc, startup_timeout)
            break
        except RuntimeError:
            _stop(proc)
            if attempt < PORT_ATTEMPTS - 1 and PORT_IN_USE in server.log_path.read_text().lower():
                continue
            raise
    try:
        yield server
    finally:
        _stop(proc)


def _start_orthanc(binary: str, workdir: Path, ae_title: str) -> tuple[OrthancServer, subprocess.Popen]:
    server = OrthancServer(free_port(), free_port(), ae_title, workdir / "orthanc.log")
    config = {
        "Name": "xraytriage-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": server.http_port,
        "DicomPort": server.dicom_port,
        "DicomAet": ae_title,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomModalities": {},
        "HttpThreadsCount": 4,
        "ConcurrentJobs": 1,
        "SaveJobs": False,
        "StorageCompression": False,
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    with server.log_path.open("w") as log:
        proc = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    return server, proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def write_image(
    path: Path,
    sop_class_uid: str,
    modality: str,
    body_part: str | None = "CHEST",
    study_uid: str | None = None,
    size: int = 16,
    pixels=None,
) -> Path:
    """A small, valid, uncompressed DICOM image file of any SOP class (e.g. a CT to refuse);
    ``pixels`` (a 2-D uint8 array, e.g. a real film's) replaces the synthetic 12-bit ramp."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = "Synthetic^Test"
    ds.PatientID = "SYN-0001"
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if pixels is None:
        pixels = (np.arange(size * size, dtype=np.uint16) % 4096).reshape(size, size)
    bits = 8 if pixels.dtype == np.uint8 else 12
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_copy(
    source: Path, target: Path, transfer_syntax: str | None = None, new_instance: bool = False
) -> Path:
    """``source`` re-encoded in ``transfer_syntax`` (uncompressed ones: the pixels are decoded),
    or as another SOP instance of the same study and series (``new_instance``)."""
    from pydicom.uid import UID, generate_uid

    ds = pydicom.dcmread(source)
    if transfer_syntax is not None and transfer_syntax != ds.file_meta.TransferSyntaxUID:
        syntax = UID(transfer_syntax)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)  # the same instance, re-encoded
        ds.file_meta.TransferSyntaxUID = syntax
    if new_instance:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return target


def radiograph_overlay(path: Path):
    """A grey radiograph with a red square 'heatmap', as the explain step would hand over."""
    import numpy as np

    from xraytriage.io import read_radiograph

    grey = (read_radiograph(path).pixels * 255).astype(np.uint8)
    rgb = np.stack([grey, grey, grey], axis=-1)
    rgb[300:500, 600:800, 0] = 255
    return rgb


def sr_content_items(ds) -> list[tuple[str, object]]:
    """(concept name meaning, value) for every SR content item, depth first."""
    items = []
    for item in ds.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        kind = item.ValueType
        if kind == "NUM":
            value = float(item.MeasuredValueSequence[0].NumericValue)
        elif kind == "CODE":
            value = item.ConceptCodeSequence[0].CodeMeaning
        elif kind == "TEXT":
            value = item.TextValue
        elif kind == "IMAGE":
            value = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        else:
            value = None
        items.append((name, value))
        items.extend(sr_content_items(item))
    return items


def findings_in(sr) -> dict[str, dict[str, object]]:
    """finding (the model's label: the group's tracking identifier, whatever code the finding
    has) -> {Probability, Operating threshold, At or above operating threshold}."""
    out: dict[str, dict[str, object]] = {}
    current = None
    for name, value in sr_content_items(sr):
        if name == "Tracking Identifier":
            current = out.setdefault(str(value), {})
        elif current is not None and name in (
            "Probability",
            "Operating threshold",
            "At or above operating threshold",
        ):
            current[name] = value
    return out
