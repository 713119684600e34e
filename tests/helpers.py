"""Test support: a small model trained for real on the synthetic planted-lesion data.

Deliberately independent of ``xraytriage.train`` so that tests of evaluation, explanation and
triage do not break when the training pipeline changes; the training tests cover that pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from xraytriage.data import CSVDataset, UInt8Dataset
from xraytriage.data.synthetic import SYNTHETIC_CLASSES
from xraytriage.data.torch_dataset import collate
from xraytriage.models import Checkpoint, ModelConfig, build_model
from xraytriage.preprocess import PreprocessContract


def train_tiny_checkpoint(
    synthetic_dir: Path,
    epochs: int = 12,
    size: int = 64,
    seed: int = 0,
    backbone: str = "vgg_like",
    width: float = 0.25,
) -> Checkpoint:
    torch.manual_seed(seed)
    labels = [*SYNTHETIC_CLASSES, "No Finding"]
    dataset = CSVDataset(synthetic_dir / "labels.csv", labels=labels)
    contract = PreprocessContract(size=size)
    loader = DataLoader(
        UInt8Dataset(dataset, contract),
        batch_size=16,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )
    cfg = ModelConfig(backbone=backbone, num_classes=len(labels), in_channels=1, width=width)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    images_cache = [(contract.normalize(x), y) for x, y, _ in loader]  # decode once
    for _ in range(epochs):
        model.train()
        for x, y in images_cache:
            mask = ~torch.isnan(y)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(x)[mask], torch.nan_to_num(y)[mask]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return Checkpoint(
        model=cfg,
        label_names=labels,
        preprocess=contract,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        thresholds=dict.fromkeys(labels, 0.5),
        data_fingerprint=dataset.fingerprint(),
        name="tiny-synthetic",
    )


def synthetic_auc(checkpoint: Checkpoint, synthetic_dir: Path) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    from xraytriage.models.inference import TorchPredictor

    dataset = CSVDataset(synthetic_dir / "labels.csv", labels=checkpoint.label_names)
    ds = UInt8Dataset(dataset, checkpoint.preprocess)
    batch = np.stack([ds.image(i) for i in range(len(ds))])
    probs = TorchPredictor(checkpoint).predict_proba(batch)
    return {
        n: float(roc_auc_score(dataset.labels[:, j], probs[:, j]))
        for j, n in enumerate(checkpoint.label_names)
    }


def count_nih_folders(nih_root: Path, folders: list[str] | None = None) -> dict:
    """What the NIH folders hold, counted straight from the files and the label CSVs (not through
    the loader under test), so tests follow the data instead of pinning counts: images, patients,
    views, No Finding count, box images and boxes, per collection folder."""
    import pandas as pd

    names = folders or sorted(
        p.name for p in nih_root.iterdir() if p.is_dir() and p.name != "meta" and not p.name.startswith(".")
    )
    files = {f.name: folder for folder in names for f in sorted((nih_root / folder).rglob("*.png"))}
    entries = pd.read_csv(nih_root / "meta" / "Data_Entry_2017_v2020.csv.gz")
    listed = len(entries)
    entries = entries[entries["Image Index"].isin(files)]
    boxes = pd.read_csv(nih_root / "meta" / "BBox_List_2017.csv.gz")
    boxes = boxes[boxes["Image Index"].isin(set(entries["Image Index"]))]
    folder_of = entries["Image Index"].map(files)
    return {
        "listed": listed,
        "images": len(entries),
        "patients": int(entries["Patient ID"].nunique()),
        "no_finding": int((entries["Finding Labels"] == "No Finding").sum()),
        "views": entries["View Position"].value_counts().to_dict(),
        "boxes": len(boxes),
        "box_images": int(boxes["Image Index"].nunique()),
        "per_folder": folder_of.value_counts().to_dict(),
        "folders": names,
    }
