"""The GPU script's rehearsal: ``bench/gpu_run.py --dry-run`` runs every step on the CPU (small
network, real NIH images), prints a line per step and writes every step's figures to JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_exercises_every_step(shared_data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_run.py"), "--dry-run", "--backbone", "vgg_like",
         "--data", str(shared_data / "nih"), "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("[") and "dry run" in lines[0]
    result = json.loads((tmp_path / "gpu_run.json").read_text())
    assert result["dry_run"] is True
    steps = result["steps"]
    assert list(steps) == ["environment", "train_bench", "loader", "train_run"]
    assert all(step["status"] == "ok" for step in steps.values()), steps
    for name in steps:
        assert any(f"{name}: start" in line for line in lines) and any(
            f"{name}: ok" in line for line in lines
        )
    rates = steps["train_bench"]["images_per_s"]
    assert {"eager fp32", "channels_last + bf16", "compile + channels_last + bf16"} <= set(rates)
    assert all(r > 0 for r in rates.values())
    assert steps["loader"]["loaded"] == steps["loader"]["images"] > 0
    assert steps["loader"]["loader_images_per_s"] > 0
    [epoch] = steps["train_run"]["epochs"]
    assert epoch["epoch"] == 1 and epoch["images_per_s"] > 0
