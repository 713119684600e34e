"""Shared fixtures: the real data in ../shared/data and generated synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tool_support import in_ci, missing_reason, skip_missing

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XRAYTRIAGE_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(2)


def _fail_missing_tool_in_ci(report) -> None:
    """Under CI=true a skip for a missing tool or missing shared data is a failure (tool_support)."""
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = missing_reason(report.longrepr)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = f"CI=true and this test would skip: {reason} (CI must install it)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_missing_tool_in_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    _fail_missing_tool_in_ci(report)
    return report


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        skip_missing(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """120 synthetic 64 px images with planted lesions: labels.csv, boxes.csv, images/."""
    from xraytriage.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, n_images=120, size=64, seed=0)
    return root


@pytest.fixture(scope="session")
def synthetic_holdout_dir(tmp_path_factory) -> Path:
    """60 more synthetic images from another seed: held out from ``tiny_checkpoint``'s training."""
    from xraytriage.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic_holdout")
    make_synthetic_dataset(root, n_images=60, size=64, seed=1)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(synthetic_dir, tmp_path_factory):
    """A small VGG-like network trained for real on the synthetic data (about 10 s on 2 cores)."""
    from helpers import train_tiny_checkpoint

    return train_tiny_checkpoint(synthetic_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint_path(tiny_checkpoint, tmp_path_factory) -> Path:
    return tiny_checkpoint.save(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
