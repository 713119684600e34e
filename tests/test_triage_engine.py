"""The triage engine and command end to end: real files, generated DICOM studies, MURA folders."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from xraytriage.cli.main import main
from xraytriage.models.inference import make_predictor
from xraytriage.triage import TriageEngine, TriageOptions, read_worklist_csv


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAYTRIAGE_CACHE", str(tmp_path / "cache"))


def write_dicom(
    path: Path, study_uid: str, modality: str = "CR", priority: str | None = None, seed: int = 0
) -> Path:
    """A small 16-bit MONOCHROME2 DICOM image with the given study and modality."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((48, 40)) * 4000).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientID, ds.Modality = "TEST", modality
    if priority:
        ds.RequestedProcedurePriority = priority
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8)).save(path)
    return path


def run_cli(*args: str) -> int:
    return main(["triage", *map(str, args), "--no-progress"])


def test_mixed_folder_gives_a_sorted_worklist_with_bad_files_reported(
    tiny_checkpoint_path, shared_data, tmp_path, capsys
):
    bad = tmp_path / "bad"
    write_dicom(bad / "ct_slice.dcm", generate_uid(), modality="CT")
    (bad / "truncated.png").write_bytes((shared_data / "nih/images/00000032_037.png").read_bytes()[:400])
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.dcm").write_bytes(b"this is not a radiograph at all" * 10)
    nih = sorted((shared_data / "nih/images").glob("*.png"))[:5]
    out = tmp_path / "out"
    code = run_cli(
        *nih, shared_data / "dicom", shared_data / "other", bad,
        "--model", tiny_checkpoint_path, "--output", out, "--workers", "2", "--batch-size", "4",
    )  # fmt: skip
    assert code == 0
    rows = read_worklist_csv(out / "worklist.csv")
    assert rows == json.loads((out / "worklist.json").read_text())
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] == "error"]
    # 5 NIH + 2 JPEG studies + the real DICOMs grouped by StudyInstanceUID (counted from the files)
    dicoms = sorted((shared_data / "dicom").rglob("*.dcm"))
    study_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in dicoms}
    others = len(list((shared_data / "other").iterdir()))
    assert len(ok) == 5 + others + len(study_uids)
    assert sum(r["images"] for r in ok) == 5 + others + len(dicoms)
    # the two SIIM files share one StudyInstanceUID: one study of two images
    dicom_study = [r for r in ok if r["images"] == 2]
    assert len(dicom_study) == 1 and dicom_study[0]["study"].startswith("1.2.276.")
    assert rows[: len(ok)] == ok  # errors come last
    assert [r["rank"] for r in ok] == list(range(1, len(ok) + 1))
    priorities = [r["priority"] for r in ok]
    assert priorities == sorted(priorities, reverse=True)
    assert all(0.0 <= r["priority"] <= 1.0 and 0.0 <= r["abnormal"] <= 1.0 for r in ok)
    for r in ok:
        assert all(0.0 <= r[name] <= 1.0 for name in ("Mass", "Nodule", "Effusion", "No Finding"))
        assert r["error"] is None
    problems = {Path(r["path"]).name: r["error"] for r in errors}
    assert set(problems) == {"ct_slice.dcm", "truncated.png", "empty.png", "notes.dcm"}
    assert "modality CT" in problems["ct_slice.dcm"]
    assert "0 bytes" in problems["empty.png"]
    assert "truncated" in problems["truncated.png"] or "corrupt" in problems["truncated.png"]
    for name, message in problems.items():
        assert name in message  # every error names its file
    assert all(r["rank"] is None and r["priority"] is None for r in errors)
    printed = capsys.readouterr().out
    files = 5 + others + len(dicoms) + len(problems)
    assert f"{files} file(s) -> {len(ok)} studies triaged" in printed
    assert "4 error(s)" in printed


def test_findings_column_lists_labels_above_threshold(
    tiny_checkpoint, tiny_checkpoint_path, synthetic_dir, tmp_path
):
    images = sorted((synthetic_dir / "images").glob("*.png"))[:12]
    out = tmp_path / "out"
    assert run_cli(*images, "--model", tiny_checkpoint_path, "--output", out, "--workers", "0") == 0
    rows = read_worklist_csv(out / "worklist.csv")
    assert any(r["findings"] for r in rows)
    for r in rows:
        expected = sorted(
            (n for n in tiny_checkpoint.findings if r[n] >= tiny_checkpoint.threshold(n)), key=lambda n: -r[n]
        )
        listed = [item.rsplit(" ", 1)[0] for item in (r["findings"] or "").split("; ") if item]
        assert listed == expected
        assert "No Finding" not in listed


def test_dicom_images_are_grouped_by_study_uid_and_stat_goes_first(tiny_checkpoint_path, tmp_path):
    """A site priority is a floor (priority = max(model, site)) and wins ties (docs/serving.md,
    triage.priority). Fixed UIDs: the routine study's name sorts first, so a tie between the two
    would be decided by the name if the site priority did not break it (it did: the tiny model
    can score the routine study 1.0, which is how this test failed at random with random UIDs)."""
    study_a, study_b = "1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.2"
    folder = tmp_path / "dicoms"
    write_dicom(folder / "a1", study_a, seed=1)  # no extension: found by content
    write_dicom(folder / "sub" / "a2.dcm", study_a, seed=2)
    write_dicom(folder / "b1.dcm", study_b, priority="STAT", seed=3)
    out = tmp_path / "out"
    assert run_cli(folder, "--model", tiny_checkpoint_path, "--output", out, "--workers", "0") == 0
    rows = read_worklist_csv(out / "worklist.csv")
    assert [(r["study"], r["images"]) for r in rows] == [(study_b, 1), (study_a, 2)]
    assert rows[0]["priority"] == 1.0 and rows[0]["site_priority"] == 1.0  # the floor: STAT = 1.0
    assert rows[1]["site_priority"] is None
    assert rows[1]["priority"] == pytest.approx(rows[1]["abnormal"], abs=1e-6)  # no floor: the model's


def test_at_equal_priority_the_site_priority_goes_first():
    from xraytriage.triage.worklist import WorklistRow, sort_worklist

    rows = sort_worklist(
        [
            WorklistRow(study="a-routine", path="a", priority=1.0),
            WorklistRow(study="b-stat", path="b", priority=1.0, site_priority=1.0),
            WorklistRow(study="c-low", path="c", priority=1.0, site_priority=0.0),
            WorklistRow(study="d-model", path="d", priority=0.99, site_priority=0.5),
        ]
    )
    assert [(r.study, r.rank) for r in rows] == [
        ("b-stat", 1),
        ("c-low", 2),
        ("a-routine", 3),
        ("d-model", 4),
    ]


def _mura_tree(root: Path) -> list[Path]:
    return [
        write_png(root / "patient1" / "study1_positive" / "image1.png", 1),
        write_png(root / "patient1" / "study1_positive" / "image2.png", 2),
        write_png(root / "patient1" / "study1_positive" / "image3.png", 3),
        write_png(root / "patient1" / "study2_negative" / "image1.png", 4),
        write_png(root / "patient2" / "study1_negative" / "image1.png", 5),
    ]


@pytest.mark.parametrize("method", ["max", "mean", "noisy_or"])
def test_mura_folders_are_studies_and_aggregate_their_images(tiny_checkpoint, tmp_path, method):
    root = tmp_path / "mura"
    _mura_tree(root)
    predictor = make_predictor(tiny_checkpoint, "torch")
    per_image = TriageEngine(predictor, TriageOptions(workers=0, progress=False)).run([root])
    by_folder = TriageEngine(
        predictor, TriageOptions(workers=0, progress=False, study_from="folder", aggregate=method)
    ).run([root])
    assert len(per_image.rows) == 5 and len(by_folder.rows) == 3
    images = {r.path: r.abnormal for r in per_image.rows}
    study = next(r for r in by_folder.rows if r.study.endswith("patient1/study1_positive"))
    assert study.images == 3 and len(study.image_paths) == 3
    values = np.array([images[p] for p in study.image_paths])
    expected = {"max": values.max(), "mean": values.mean(), "noisy_or": 1 - np.prod(1 - values)}[method]
    assert study.abnormal == pytest.approx(expected, abs=1e-6)
    assert images[study.path] == values.max()  # the row points at its most suspicious image


def test_urgency_and_site_priority_options_change_the_order(tiny_checkpoint_path, synthetic_dir, tmp_path):
    images = sorted((synthetic_dir / "images").glob("*.png"))[:8]
    plain = tmp_path / "plain"
    assert run_cli(*images, "--model", tiny_checkpoint_path, "--output", plain, "--workers", "0") == 0
    base = read_worklist_csv(plain / "worklist.csv")
    last = base[-1]
    site = tmp_path / "site.csv"
    site.write_text(f"path,priority\n{last['path']},STAT\n")
    urgency = tmp_path / "urgency.yaml"
    urgency.write_text("weights:\n  Effusion: 1.0\n")
    out = tmp_path / "out"
    args = ["--model", tiny_checkpoint_path, "--output", out, "--workers", "0"]
    assert run_cli(*images, *args, "--site-priority", site, "--urgency", urgency) == 0
    rows = read_worklist_csv(out / "worklist.csv")
    assert rows[0]["path"] == last["path"] and rows[0]["priority"] == 1.0
    for r in rows[1:]:
        assert r["priority"] == pytest.approx(1 - (1 - r["abnormal"]) * (1 - r["Effusion"]), abs=1e-5)
        assert r["priority"] >= r["abnormal"] - 1e-6


def test_onnx_and_torch_backends_give_the_same_worklist(tiny_checkpoint, shared_data):
    paths = sorted((shared_data / "nih/images").glob("*.png"))[:6]
    results = {
        backend: TriageEngine(
            make_predictor(tiny_checkpoint, backend), TriageOptions(workers=0, progress=False)
        ).run(paths)
        for backend in ("onnx", "torch")
    }
    onnx_rows = {r.path: r for r in results["onnx"].rows}
    for row in results["torch"].rows:
        other = onnx_rows[row.path]
        assert abs(row.priority - other.priority) < 1e-4
        for name, p in row.probabilities.items():
            assert abs(p - other.probabilities[name]) < 1e-4


def _direct_prediction(predictor, path: str) -> np.ndarray:
    """The calibrated probabilities of one file predicted on its own (a batch of one)."""
    from xraytriage.triage.engine import prepare_image

    prepared = prepare_image(path, predictor.checkpoint.preprocess)
    assert prepared.error is None, prepared.error
    return predictor.predict_proba(prepared.image[None])[0]


@pytest.mark.parametrize(
    ("backend", "workers"),
    [("torch", 0), ("onnx", 0), pytest.param("torch", 2, marks=pytest.mark.slow)],  # slow: a process pool
)
def test_each_row_scores_its_own_image(tiny_checkpoint, synthetic_holdout_dir, tmp_path, backend, workers):
    """Batches of 3 with an unreadable file in the middle of one: every worklist row's scores
    equal a direct single-image prediction of that row's file (a score shifted by one image
    within a batch, or past the bad file, fails here)."""
    paths = [str(p) for p in sorted((synthetic_holdout_dir / "images").glob("*.png"))[:10]]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    paths.insert(4, str(broken))
    predictor = make_predictor(tiny_checkpoint, backend)
    engine = TriageEngine(predictor, TriageOptions(batch_size=3, workers=workers, progress=False))
    result = engine.run(paths)
    direct = {p: _direct_prediction(predictor, p) for p in paths if p != str(broken)}
    tol = 1e-5
    # the images must score differently, or a shifted score could not show
    scores = list(direct.values())
    neighbours = [float(np.abs(a - b).max()) for a, b in pairwise(scores)]
    assert min(neighbours) > 100 * tol, neighbours
    rows = [r for r in result.rows if r.ok]
    assert [r.image_paths for r in rows] == [[r.path] for r in rows]  # one image per study here
    assert sorted(r.path for r in rows) == sorted(direct)
    assert [r.path for r in result.rows if not r.ok] == [str(broken)]
    labels = tiny_checkpoint.label_names
    for row in rows:
        expected = direct[row.path]
        got = np.array([row.probabilities[name] for name in labels])
        np.testing.assert_allclose(got, expected, atol=tol, err_msg=row.path)
        abnormal = tiny_checkpoint.abnormal_probability(expected[None])[0]
        assert row.abnormal == pytest.approx(float(abnormal), abs=tol), row.path


@pytest.mark.slow  # the command end to end (the engine tests above run in the fast tier)
def test_worklist_csv_rows_score_their_own_files(
    tiny_checkpoint, tiny_checkpoint_path, synthetic_holdout_dir, tmp_path
):
    """The same through the command and its CSV: each row's probabilities are its file's own."""
    paths = [str(p) for p in sorted((synthetic_holdout_dir / "images").glob("*.png"))[10:17]]
    out = tmp_path / "out"
    args = [
        "--model",
        tiny_checkpoint_path,
        "--output",
        out,
        "--workers",
        "0",
        "--batch-size",
        "3",
        "--backend",
        "torch",
    ]
    assert run_cli(*paths, *args) == 0
    rows = read_worklist_csv(out / "worklist.csv")
    predictor = make_predictor(tiny_checkpoint, "torch")
    assert sorted(Path(r["path"]).name for r in rows) == sorted(Path(p).name for p in paths)
    by_name = {Path(p).name: p for p in paths}
    for row in rows:
        expected = _direct_prediction(predictor, by_name[Path(row["path"]).name])
        got = np.array([row[name] for name in tiny_checkpoint.label_names], dtype=float)
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=row["path"])


def test_exit_code_is_nonzero_when_nothing_could_be_triaged(tiny_checkpoint_path, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    assert (
        run_cli(tmp_path / "in", tmp_path / "missing.png", "--model", tiny_checkpoint_path, "--output", out)
        == 1
    )
    assert "no image could be triaged" in capsys.readouterr().out
    rows = read_worklist_csv(out / "worklist.csv")
    assert [r["status"] for r in rows] == ["error", "error"]
    assert "file not found" in rows[0]["error"] + rows[1]["error"]
    assert (
        run_cli(
            tmp_path / "empty-folder-that-does-not-exist", "--model", tiny_checkpoint_path, "--output", out
        )
        == 1
    )
    assert run_cli(tmp_path / "in", "--model", tmp_path / "nope.pt", "--output", out) == 2


def test_decoding_is_streamed_with_a_bounded_queue(tiny_checkpoint, tmp_path):
    paths = [str(write_png(tmp_path / f"{i:03d}.png", i)) for i in range(30)]
    pulled = []

    def source():
        for p in paths:
            pulled.append(p)
            yield p

    engine = TriageEngine(
        make_predictor(tiny_checkpoint, "torch"),
        TriageOptions(workers=2, batch_size=4, prefetch=6, progress=False),
    )
    results = engine.iter_results(source())
    first = next(results)
    assert first.ok
    assert len(pulled) <= 6 + 4  # never more than the prefetch window ahead of the model
    rest = list(results)
    assert len(rest) == 29 and all(r.ok for r in rest)


def test_a_crashing_decoder_costs_one_error_row_not_the_batch(tiny_checkpoint, tmp_path):
    from triage_poison import crash_on_poison

    paths = [write_png(tmp_path / f"{i}.png", i) for i in range(6)]
    paths.insert(3, write_png(tmp_path / "poison.png", 99))
    engine = TriageEngine(
        make_predictor(tiny_checkpoint, "torch"),
        TriageOptions(workers=2, batch_size=2, progress=False),
        prepare=crash_on_poison,
    )
    result = engine.run(paths)
    errors = [r for r in result.rows if not r.ok]
    assert result.images_ok == 6
    assert len(errors) == 1 and "poison.png" in errors[0].error and "crashed" in errors[0].error


def test_explain_writes_heatmaps_of_the_listed_findings(tiny_checkpoint_path, synthetic_dir, tmp_path):
    images = sorted((synthetic_dir / "images").glob("*.png"))[:6]
    out = tmp_path / "out"
    code = run_cli(
        *images, "--model", tiny_checkpoint_path, "--output", out, "--workers", "0", "--explain", "--top", "3"
    )
    assert code == 0
    rows = [r for r in read_worklist_csv(out / "worklist.csv") if r["findings"]][:3]
    expected = {
        f"rank{r['rank']:03d}_{Path(r['path']).stem}_{item.rsplit(' ', 1)[0]}.png"
        for r in rows
        for item in r["findings"].split("; ")[:4]  # at most the 4 most probable (--explain-findings)
    }
    written = {p.name for p in (out / "heatmaps").glob("*.png")}
    assert rows and written == expected
    with Image.open(next((out / "heatmaps").glob("*.png"))) as overlay:  # 64 px image + legend
        assert overlay.mode == "RGB" and overlay.size[0] > 64 and overlay.size[1] >= 64
        assert overlay.text["Description"].startswith("Grad-CAM")


def test_explain_findings_caps_heatmaps_per_study_most_probable_first(
    tiny_checkpoint_path, synthetic_dir, tmp_path
):
    images = sorted((synthetic_dir / "images").glob("*.png"))[:6]
    out = tmp_path / "out"
    args = [*images, "--model", tiny_checkpoint_path, "--output", out, "--workers", "0", "--explain"]
    assert run_cli(*args, "--top", "6", "--explain-findings", "1") == 0
    rows = [r for r in read_worklist_csv(out / "worklist.csv") if r["findings"]]
    expected = {
        f"rank{r['rank']:03d}_{Path(r['path']).stem}_{r['findings'].split('; ')[0].rsplit(' ', 1)[0]}.png"
        for r in rows
    }
    assert any(len(r["findings"].split("; ")) > 1 for r in rows)  # the cap has something to cut
    assert {p.name for p in (out / "heatmaps").glob("*.png")} == expected


def test_demo_triages_the_bundled_samples(tiny_checkpoint_path, tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--model",
            str(tiny_checkpoint_path),
            "--output",
            str(out),
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    rows = read_worklist_csv(out / "worklist.csv")
    assert len(rows) == 10 and all(r["status"] == "ok" for r in rows)  # 9 NIH PNGs + 1 SIIM DICOM
    assert any(r["study"].startswith("1.2.276.") for r in rows)
    printed = capsys.readouterr().out
    assert "Worklist: top 10 of 10" in printed and str(out / "worklist.csv") in printed


def test_demo_without_the_bundled_model_says_so(tmp_path, monkeypatch, capsys):
    import xraytriage.models.published as published

    monkeypatch.setattr(published, "BUNDLED_MODEL", tmp_path / "absent" / "model.pt")
    assert main(["demo", "--output", str(tmp_path / "out")]) == 2
    assert "the bundled default model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
