"""The int8 backend: a static QDQ twin calibrated on real radiographs, recorded in its metadata,
checked against float32 at export, made once and cached, refused when it ranks unlike float32,
and used by triage and serve with ``--backend onnx-int8``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xraytriage.cli.main import main
from xraytriage.errors import QuantizationError
from xraytriage.models.inference import OnnxPredictor, make_predictor, onnx_cache_dir, resolve_onnx_file
from xraytriage.models.onnx_export import read_onnx_metadata
from xraytriage.models.quantize import (
    int8_sibling,
    load_calibration_images,
    parity_report,
    quantize_onnx,
    read_quantization,
    spearman,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAYTRIAGE_CACHE", str(tmp_path / "cache"))


def _nih(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "nih" / "images").glob("*.png"))


def test_export_writes_an_int8_twin_calibrated_on_real_images(
    tiny_checkpoint_path, shared_data, tmp_path, capsys
):
    out = tmp_path / "model.onnx"
    argv = ["export", "--model", str(tiny_checkpoint_path), "--output", str(out), "--int8",
            str(shared_data / "nih" / "images"), "--calibration-count", "12", "--parity-count", "24"]  # fmt: skip
    assert main(argv) == 0
    twin = int8_sibling(out)
    assert twin.name == "model.int8.onnx" and twin.is_file()
    assert int8_sibling("runs/a.v2/model.v2.pt") == Path("runs/a.v2/model.v2.int8.onnx")
    printed = capsys.readouterr().out
    assert "int8 twin" in printed and "rank correlation" in printed
    quant = read_quantization(twin)
    assert quant["calibration_images"] == 12 == len(quant["calibration_files"])
    assert quant["calibration_source"] == str(shared_data / "nih" / "images")
    names = {p.name for p in _nih(shared_data)}
    assert set(quant["calibration_files"]) <= names
    report = quant["parity"]
    assert report["images"] == 24
    assert report["abnormal_rank_correlation"] >= 0.98 and report["study_flag_agreement"] >= 0.9
    # the float32 export's metadata travels on (labels, contract, weight hash), plus the record
    meta = read_onnx_metadata(twin)
    assert meta["state_hash"] == read_onnx_metadata(out)["state_hash"]
    assert json.loads(meta["quantization"])["calibration_images"] == 12
    assert read_quantization(out) is None
    # really int8: quantised weights and QDQ pairs in the graph
    import onnx

    graph = onnx.load(str(twin)).graph
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) > 5
    assert any(i.data_type == onnx.TensorProto.INT8 for i in graph.initializer)


def test_int8_backend_ranks_real_images_like_float32(tiny_checkpoint, shared_data, tmp_path):
    files = _nih(shared_data)
    calibration, names, used = load_calibration_images(files[::7], tiny_checkpoint, 16)
    held_out, _, _ = load_calibration_images(files[1::7], tiny_checkpoint, 48)
    fp32 = resolve_onnx_file(tiny_checkpoint)
    twin = quantize_onnx(tiny_checkpoint, fp32, tmp_path / "t.int8.onnx", calibration, names, held_out[:8])
    a32 = OnnxPredictor(fp32, checkpoint=tiny_checkpoint).predict_proba(held_out)
    a8 = OnnxPredictor(twin, checkpoint=tiny_checkpoint).predict_proba(held_out)
    report = parity_report(tiny_checkpoint, np.log(a32 / (1 - a32)), np.log(a8 / (1 - a8)))
    assert used == 16 and len(held_out) == 48
    assert np.max(np.abs(a32 - a8)) < 0.1  # quantisation noise, not another model
    assert spearman(a32[:, 0], a8[:, 0]) > 0.95
    assert report["images"] == 48


def test_backend_quantises_once_then_reuses_the_cache(tiny_checkpoint):
    first = make_predictor(tiny_checkpoint, "onnx-int8")
    assert first.name == "onnx-int8" and first.onnx_path.name.endswith(".int8.onnx")
    assert first.onnx_path.parent == onnx_cache_dir()
    quant = read_quantization(first.onnx_path)
    assert quant["calibration_source"] == "bundled samples" and quant["calibration_images"] > 0
    stamp = first.onnx_path.stat().st_mtime_ns
    again = make_predictor(tiny_checkpoint, "onnx-int8")
    assert again.onnx_path == first.onnx_path and again.onnx_path.stat().st_mtime_ns == stamp
    # the float32 backend never picks the int8 file up
    assert read_quantization(make_predictor(tiny_checkpoint, "onnx").onnx_path) is None


def test_a_stale_int8_sibling_is_ignored(tiny_checkpoint, tmp_path):
    import torch

    path = tiny_checkpoint.save(tmp_path / "model.pt")
    first = make_predictor(path, "onnx-int8").onnx_path
    int8_sibling(path).write_bytes(first.read_bytes())
    assert make_predictor(path, "onnx-int8").onnx_path == int8_sibling(path)  # matches: used
    changed = tiny_checkpoint.from_dict(tiny_checkpoint.to_dict())
    changed.state_dict = {
        k: v + 0.01 if torch.is_floating_point(v) else v for k, v in changed.state_dict.items()
    }
    changed.save(path)
    assert make_predictor(path, "onnx-int8").onnx_path.parent == onnx_cache_dir()


def test_a_twin_that_ranks_unlike_float32_is_refused(tiny_checkpoint, shared_data, tmp_path):
    images, names, _ = load_calibration_images(_nih(shared_data)[:8], tiny_checkpoint, 8)
    fp32 = resolve_onnx_file(tiny_checkpoint)
    out = tmp_path / "bad.int8.onnx"
    with pytest.raises(QuantizationError, match="rank correlation"):
        quantize_onnx(tiny_checkpoint, fp32, out, images, names, images, min_rank_correlation=1.01)
    assert not out.exists()
    with pytest.raises(QuantizationError, match="no readable calibration images"):
        quantize_onnx(tiny_checkpoint, fp32, out, images[:0], [], images)


def test_unreadable_calibration_files_are_skipped_by_name(tiny_checkpoint, shared_data, tmp_path, caplog):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    images, names, used = load_calibration_images([bad, *_nih(shared_data)[:2]], tiny_checkpoint, 2)
    assert names == [p.name for p in _nih(shared_data)[:2]] and used == 3 and images.dtype == np.uint8
    assert "broken.png" in caplog.text


def test_triage_cli_runs_on_the_int8_backend(tiny_checkpoint_path, shared_data, tmp_path):
    out = tmp_path / "triage"
    files = [str(p) for p in _nih(shared_data)[:6]]
    assert main(["triage", *files, "--model", str(tiny_checkpoint_path), "--backend", "onnx-int8",
                 "--output", str(out), "--no-progress"]) == 0  # fmt: skip
    import pandas as pd

    rows = pd.read_csv(out / "worklist.csv")
    assert len(rows) == len(files) and rows["abnormal"].between(0, 1).all()


def test_bundled_model_ships_its_int8_twin_and_it_ranks_held_out_images_like_float32(shared_data):
    import xraytriage
    from xraytriage.models.checkpoint import load_checkpoint
    from xraytriage.stats import roc_auc

    path = Path(xraytriage.__file__).parent / "assets" / "default_model" / "model.pt"
    checkpoint = load_checkpoint(path)
    int8 = make_predictor(path, "onnx-int8")
    assert int8.onnx_path == int8_sibling(path)  # shipped, matching the weights: no quantising here
    quant = read_quantization(int8.onnx_path)
    assert quant["calibration_images"] == len(quant["calibration_files"]) > 0
    assert quant["parity"]["abnormal_rank_correlation"] >= 0.99
    # held out: the pediatric images were never trained on (every 4th, both classes)
    files = [
        p
        for p in sorted((shared_data / "pediatric").rglob("*"))
        if p.suffix.lower() in (".jpeg", ".jpg", ".png")
    ]
    images, names, _ = load_calibration_images(files[::4], checkpoint, len(files))
    y = np.array([float(p.parent.name.lower() != "normal") for p in files[::4] if p.name in set(names)])
    assert 0 < y.sum() < len(y)
    fp32 = make_predictor(path, "onnx")
    a32 = checkpoint.abnormal_probability(fp32.predict_proba(images))
    a8 = checkpoint.abnormal_probability(int8.predict_proba(images))
    assert abs(roc_auc(y, a8) - roc_auc(y, a32)) < 0.005
    assert spearman(a32, a8) > 0.99
