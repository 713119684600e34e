"""Distributed data parallel on CPU: two Gloo processes under torchrun train one model together."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from train_support import make_data, tiny_config
from xraytriage.models import load_checkpoint

pytestmark = pytest.mark.slow  # two training processes


def test_two_process_gloo_run_trains_and_writes_one_checkpoint(tmp_path):
    csv = make_data(tmp_path / "data", n_images=32, size=32, n_patients=16, seed=8)
    config = tmp_path / "ddp.yaml"
    config.write_text(
        yaml.safe_dump(tiny_config(csv, epochs=2, max_steps_per_epoch=2, batch_size=4, device="cpu"))
    )
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "xraytriage.cli.main", "train", str(config), "--output", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert sorted(p.name for p in out.rglob("*.pt")) == ["best.pt", "last.pt", "last.state.pt"]
    assert len(list((out / "tensorboard").glob("events.*"))) == 1  # rank 0 alone logs
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1, 2]
    ckpt = load_checkpoint(out / "best.pt")
    assert not any(k.startswith("module.") for k in ckpt.state_dict)  # DDP wrapper not saved
    assert ckpt.metrics["n_train"] + ckpt.metrics["n_val"] == 32
    assert proc.stdout.count("best epoch") == 1  # one summary printed, by rank 0
