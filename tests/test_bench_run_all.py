"""bench/run_all.py: every benchmark it names exists, and its summary keeps the ratio lines the
benchmarks print (and nothing else)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_script_exists(run_all):
    for name, (script, _, _) in run_all.BENCHES.items():
        assert (BENCH / script).is_file(), name
    assert "int8" in run_all.BENCHES and "train" in run_all.BENCHES


def test_summary_collects_ratio_lines_from_a_benchmark(run_all, tmp_path, monkeypatch):
    fake = tmp_path / "bench_fake.py"
    fake.write_text(
        "print('densenet121   224 px  onnx   1.29 images/s')\n"
        "print('densenet121  ONNX int8 / fp32 = 1.40x end to end (1.76x per CPU-second)')\n"
        "print('ratio bf16/fp32 (training): 2.21x')\n"
        "print('best: channels_last + bf16 autocast at 13.5 images/s = 2.21x eager fp32')\n"
    )
    monkeypatch.setattr(run_all, "BENCHES", {"fake": (str(fake), [], [])})
    monkeypatch.setattr(sys, "argv", ["run_all.py"])
    code, ratios = run_all.run("fake", quick=False)
    assert code == 0
    assert ratios == [
        "densenet121  ONNX int8 / fp32 = 1.40x end to end (1.76x per CPU-second)",
        "ratio bf16/fp32 (training): 2.21x",
        "best: channels_last + bf16 autocast at 13.5 images/s = 2.21x eager fp32",
    ]
