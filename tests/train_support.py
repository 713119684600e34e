"""Shared set-up of the training tests: tiny synthetic planted-lesion data and tiny configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from xraytriage.data.synthetic import make_synthetic_dataset

LABELS = ["Mass", "Nodule", "Effusion", "No Finding"]


def make_data(
    root: Path, n_images: int = 32, size: int = 32, n_patients: int | None = None, seed: int = 0
) -> Path:
    labels_csv, _ = make_synthetic_dataset(
        root, n_images=n_images, size=size, n_patients=n_patients, seed=seed
    )
    return labels_csv


def tiny_config(csv: Path, **sections: Any) -> dict[str, Any]:
    """A config dict that runs one step per epoch of a tiny network in well under a second."""
    config: dict[str, Any] = {
        "name": "test",
        "data": {"kind": "csv", "options": {"csv": str(csv), "labels": LABELS}, "val_fraction": 0.3},
        "preprocess": {"size": 32},
        "model": {"backbone": "vgg_like", "width": 0.25},
        "epochs": 1,
        "batch_size": 8,
        "max_steps_per_epoch": 1,
        "workers": 0,
        "progress": False,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: on a shared 2-core machine, more threads only wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
