"""``xraytriage datasets inspect|cache`` on the real data and on generated folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import count_nih_folders
from xraytriage.cli.main import main
from xraytriage.data import ImageCache
from xraytriage.preprocess import PreprocessContract


def test_inspect_nih_root_with_zero_extra_flags(shared_data, tmp_path, capsys):
    out = tmp_path / "nih.json"
    expected = count_nih_folders(shared_data / "nih")
    assert main(["datasets", "inspect", "nih", "--root", str(shared_data / "nih"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for text in (
        f"{expected['images']:,}",
        f"{expected['patients']:,}",
        "Pleural Thickening",
        "co-occurrence",
    ):
        assert text in printed
    assert "collections" in printed and "holds only abnormal" in printed
    report = json.loads(out.read_text())
    assert report["images"] == expected["images"] and report["patients"] == expected["patients"]
    assert report["missing_files"] == expected["listed"] - expected["images"]
    assert report["labels"]["No Finding"]["positive"] == expected["no_finding"]
    assert report["views"] == expected["views"]
    assert set(report["collections"]) >= {"images", "images+box", "images-b", "images-c"}
    co = report["co_occurrence"]
    assert co["Effusion"]["Effusion"] == report["labels"]["Effusion"]["positive"]
    assert co["Effusion"]["Atelectasis"] == co["Atelectasis"]["Effusion"] > 0
    assert co["No Finding"]["Mass"] == 0


def test_inspect_with_folds_reports_each_split(shared_data, tmp_path):
    out = tmp_path / "folds.json"
    args = ["datasets", "inspect", "nih", "--images", str(shared_data / "nih" / "images")]
    args += ["--meta", str(shared_data / "nih" / "meta"), "--views", "PA", "--folds", "3", "--json", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert set(report["views"]) == {"PA"}
    assert list(report["splits"]) == ["fold 0", "fold 1", "fold 2"]
    assert sum(s["images"] for s in report["splits"].values()) == report["images"]
    assert sum(s["patients"] for s in report["splits"].values()) == report["patients"]


def test_inspect_chexpert_uncertainty_per_label(shared_data, tmp_path):
    out = tmp_path / "chexpert.json"
    args = ["datasets", "inspect", "chexpert", "--root", str(shared_data / "chexpert"), "--nrows", "2000"]
    args += ["--uncertainty", "U-Zeros", "--uncertainty", "Edema=U-Ones", "--seed", "1", "--json", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 2000
    assert report["policies"]["Edema"] == "U-Ones" and report["policies"]["Atelectasis"] == "U-Zeros"
    edema = report["labels"]["Edema"]
    assert edema["uncertain"] > 0 and edema["unknown"] > 0
    assert report["missing_files"] == 2000  # no CheXpert pixels in shared data
    assert set(report["splits"]) == {"train", "val", "test"}


def test_inspect_mura(shared_data, tmp_path):
    out = tmp_path / "mura.json"
    assert main(["datasets", "inspect", "mura", "--root", str(shared_data / "mura"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["studies"] == 1201 and report["body_parts"]["XR_WRIST"] == 659


def test_unknown_option_for_a_kind_is_a_clear_error(shared_data, capsys):
    code = main(["datasets", "inspect", "nih", "--root", str(shared_data / "nih"), "--body-parts", "wrist"])
    assert code == 2
    assert "does not take --body-parts" in capsys.readouterr().err  # the flag as typed


def test_cache_builds_and_reports_bad_files(synthetic_dir, tmp_path, capsys):
    import shutil

    root = tmp_path / "folders"
    labels = (synthetic_dir / "labels.csv").read_text().splitlines()[1:9]
    for line in labels:
        rel, *_rest = line.split(",")
        target = root / ("1_abnormal" if "0,0,0,1" not in line else "0_normal") / rel.split("/")[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(synthetic_dir / rel, target)
    (root / "0_normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "cache"
    args = ["datasets", "cache", "folder", "--root", str(root), "--size", "32", "--output", str(out)]
    assert main([*args, "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "8 added, 1 failed" in printed and "broken.png" in printed
    cache = ImageCache(out, PreprocessContract(size=32))
    assert len(cache) == 8 and cache.array.shape == (8, 32, 32)
    assert np.asarray(cache.array).std() > 0
    assert main([*args, "--workers", "1"]) == 0
    assert "8 already cached" in capsys.readouterr().out


@pytest.mark.parametrize("action", ["inspect", "cache"])
def test_help_lists_dataset_options(action, capsys):
    with pytest.raises(SystemExit):
        main(["datasets", action, "--help"])
    text = capsys.readouterr().out
    assert "--root" in text and "--uncertainty" in text
