"""``xraytriage triage`` in a real hospital's folders: odd file names, interrupted runs
(kill -9, Ctrl-C) resumed with ``--resume``, images the model was not made for (hand,
lateral chest) and low-resolution images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from waiting import wait_until
from xraytriage.cli.main import main
from xraytriage.triage import read_worklist_csv
from xraytriage.triage.journal import JOURNAL_NAME


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAYTRIAGE_CACHE", str(tmp_path / "cache"))


def triage(*args) -> int:
    return main(["triage", *map(str, args), "--no-progress", "--workers", "0"])


def nih(shared_data: Path, n: int, folder: str = "images") -> list[Path]:
    return sorted((shared_data / "nih" / folder).glob("*.png"))[:n]


def link_all(files: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


def test_a_non_utf8_file_name_is_written_not_fatal(shared_data, tmp_path):
    """One file named with Latin-1 bytes used to lose the whole worklist (UnicodeEncodeError)."""
    folder = link_all(nih(shared_data, 2), tmp_path / "in")
    odd = os.fsdecode(b"r\xf6ntgen_\xff.png")  # not UTF-8: Python keeps the bytes as surrogates
    (folder / odd).symlink_to(nih(shared_data, 3)[2])
    out = tmp_path / "out"
    assert triage(folder, "--output", out) == 0
    rows = read_worklist_csv(out / "worklist.csv")  # valid UTF-8
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert any(r["path"].endswith("r\\xf6ntgen_\\xff.png") for r in rows)
    records = json.loads((out / "worklist.json").read_text(encoding="utf-8"))
    assert any(r["study"].endswith("r\\xf6ntgen_\\xff.png") for r in records)
    assert not list(out.glob("*.tmp"))


def _command(inputs: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "xraytriage.cli.main",
        "triage",
        str(inputs),
        "--output",
        str(out),
        "--workers",
        "0",
        "--batch-size",
        "2",
        "--no-progress",
        *extra,
    ]


def _journal_lines(out: Path) -> int:
    try:
        return (out / JOURNAL_NAME).read_bytes().count(b"\n") - 1  # minus the header
    except OSError:
        return 0


def _interrupt(command: list[str], out: Path, sig: int, after: int, env: dict) -> subprocess.CompletedProcess:
    """Run ``command``, send ``sig`` once ``after`` images are in the journal."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    wait_until(
        lambda: _journal_lines(out) >= after or process.poll() is not None,
        120,
        interval=0.01,
        what=f"{after} images in the journal",
    )
    assert process.poll() is None, "the run finished before it could be interrupted"
    process.send_signal(sig)
    output, _ = process.communicate(timeout=60)
    return subprocess.CompletedProcess(command, process.returncode, output.decode("utf-8", "replace"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_an_interrupted_run_keeps_its_work_and_resumes(shared_data, tmp_path, sig):
    """Kill -9 or Ctrl-C mid-run used to discard every finished image."""
    files = nih(shared_data, 120)
    folder = link_all(files, tmp_path / "in")
    env = {**os.environ, "XRAYTRIAGE_CACHE": str(tmp_path / "cache")}
    reference = tmp_path / "reference"
    assert triage(folder, "--output", reference, "--batch-size", "2") == 0
    expected = read_worklist_csv(reference / "worklist.csv")

    out = tmp_path / "out"
    stopped = _interrupt(_command(folder, out), out, sig, after=10, env=env)
    kept = _journal_lines(out)
    assert 10 <= kept < len(files), stopped.stdout
    if sig == signal.SIGINT:  # Ctrl-C: the worklist of what is done is written, and says how to go on
        assert stopped.returncode == 130, stopped.stdout
        assert "--resume" in stopped.stdout
        partial = read_worklist_csv(out / "worklist.csv")
        assert len(partial) >= 10 and all(r["status"] == "ok" for r in partial)

    resumed = subprocess.run(_command(folder, out, "--resume"), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    count = int(resumed.stdout.split("resumed: ")[1].split()[0])
    assert count >= kept - 2  # a kill may cut the last line; nothing else is read again
    got = read_worklist_csv(out / "worklist.csv")
    assert len(got) == len(expected) == len(files)
    assert [(r["study"], r["rank"]) for r in got] == [(r["study"], r["rank"]) for r in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine == pytest.approx(theirs, abs=1e-6)


def test_resume_refuses_another_model(shared_data, tmp_path, capsys):
    folder = link_all(nih(shared_data, 2), tmp_path / "in")
    out = tmp_path / "out"
    assert triage(folder, "--output", out) == 0
    journal = out / JOURNAL_NAME
    lines = journal.read_text(encoding="ascii").splitlines(keepends=True)
    header = json.loads(lines[0])
    header["model_sha256"] = "0" * 64  # as if it had been written with another model file
    journal.write_text(json.dumps(header) + "\n" + "".join(lines[1:]), encoding="ascii")
    assert triage(folder, "--output", out, "--resume") == 2
    assert "cannot resume: the interrupted run used another model" in capsys.readouterr().err


def _dicom_variant(shared_data: Path, path: Path, **changes) -> Path:
    ds = pydicom.dcmread(shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(path)
    return path


def test_out_of_scope_images_get_no_findings_and_small_ones_a_warning(shared_data, tmp_path):
    """Hand and lateral chest DICOMs were given chest findings; a 64 px image had no caveat."""
    folder = tmp_path / "in"
    folder.mkdir()
    _dicom_variant(shared_data, folder / "hand.dcm", BodyPartExamined="HAND")
    _dicom_variant(shared_data, folder / "lateral.dcm", ViewPosition="LL")
    _dicom_variant(shared_data, folder / "chest.dcm")  # CHEST, PA: in scope
    small = nih(shared_data, 1, "images-64")[0]
    (folder / "small.png").symlink_to(small)
    (folder / "normal.png").symlink_to(nih(shared_data, 1)[0])
    out = tmp_path / "out"
    assert triage(folder, "--output", out) == 0
    rows = {Path(r["path"]).name: r for r in read_worklist_csv(out / "worklist.csv")}
    for name, reason in [("hand.dcm", "body part HAND"), ("lateral.dcm", "view LL, left lateral")]:
        row = rows[name]
        assert row["status"] == "error" and row["rank"] is None and row["findings"] is None
        assert row["priority"] is None and row["Effusion"] is None
        assert f"out of scope: {reason}" in row["error"]
        assert "this model reads CHEST radiographs, PA or AP views only" in row["error"]
    assert rows["chest.dcm"]["status"] == "ok" and rows["chest.dcm"]["warnings"] is None
    assert rows["small.png"]["status"] == "ok"
    assert rows["small.png"]["warnings"] == "low resolution: 64x64 px, smaller than the model's 128 px input"
    assert rows["normal.png"]["warnings"] is None
