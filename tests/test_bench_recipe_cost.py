"""bench/bench_recipe_cost.py: every variant is timed in the same rounds, the first is the 1.0x
reference, and the sizes it reports follow the network (a wider ResNet-10 has more weights and a
bigger ONNX file; a larger input does not change the weights)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_recipe_cost.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_recipe_cost", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_variant_defaults_width(bench):
    assert bench.parse_variant("160") == (160, 0.5)
    assert bench.parse_variant("128:1.0") == (128, 1.0)


def test_side_by_side_rows(bench, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "cost.json"
    argv = ["bench_recipe_cost.py", "--variant", "32:0.25", "--variant", "48:0.25", "--variant", "32:0.5"]
    argv += ["--rounds", "2", "--steps", "1", "--calls", "2", "--batch-size", "2", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 0
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == [
        "resnet10 w0.25 @ 32 px",
        "resnet10 w0.25 @ 48 px",
        "resnet10 w0.5 @ 32 px",
    ]
    assert rows[0]["train_cost_x"] == 1.0 and rows[0]["infer_cost_x"] == 1.0
    assert rows[0]["params"] == rows[1]["params"] < rows[2]["params"]
    assert rows[2]["onnx_mb"] > rows[0]["onnx_mb"]
    assert all(r["train_img_s"] > 0 and r["infer_ms"] > 0 for r in rows)
    assert "resnet10 w0.5 @ 32 px" in capsys.readouterr().out
