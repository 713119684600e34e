"""Synthetic chest-like radiographs with planted lesions whose class and box are known.

Used by tests and benchmarks where the signal must be known: a model trained briefly on these
must learn (AUC well above chance) and its heatmaps must point at the planted box.
Each class has its own pattern so a multi-label model can tell them apart:
``Mass`` a large bright disc, ``Nodule`` a small bright disc, ``Effusion`` a bright
wedge at a lung base. Images are 8-bit grayscale PNGs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SYNTHETIC_CLASSES = ("Mass", "Nodule", "Effusion")


@dataclass
class SyntheticSample:
    pixels: np.ndarray  # uint8 HxW
    labels: dict[str, int]
    boxes: list[tuple[str, float, float, float, float]]  # (finding, x, y, w, h)


def _chest_background(
    rng: np.random.Generator, size: int
) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 0.55 + 0.1 * rng.standard_normal() * (yy - 0.5)
    lungs = []
    for cx in (0.3, 0.7):
        cx += rng.uniform(-0.02, 0.02)
        cy, rx, ry = (
            0.5 + rng.uniform(-0.03, 0.03),
            0.15 + rng.uniform(-0.02, 0.02),
            0.3 + rng.uniform(-0.03, 0.03),
        )
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        img = np.where(inside, img - 0.3, img)
        lungs.append((cx, cy, rx, ry))
    spine = np.abs(xx - 0.5) < 0.04
    img = np.where(spine, img + 0.25, img)
    for k in range(4):  # ribs: faint bright arcs
        rib = np.abs(yy - (0.28 + 0.12 * k) - 0.05 * np.cos((xx - 0.5) * 6)) < 0.01
        img = np.where(rib, img + 0.08, img)
    img = img + 0.03 * rng.standard_normal((size, size)).astype(np.float32)
    return img, lungs


def _plant(img: np.ndarray, finding: str, rng: np.random.Generator, lungs, size: int):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy, rx, ry = lungs[int(rng.integers(0, 2))]
    if finding == "Effusion":
        w, h = 2 * rx * size * 0.9, 0.18 * size
        x0, y0 = cx * size - w / 2, (cy + ry) * size - h - 0.02 * size
        region = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
        ramp = np.clip((yy - y0) / max(h, 1), 0, 1)
        img += np.where(region, 0.35 * (0.5 + 0.5 * ramp), 0.0)
        return (float(x0), float(y0), float(w), float(h))
    radius = (0.09 if finding == "Mass" else 0.04) * size
    px = cx * size + rng.uniform(-0.4, 0.4) * rx * size
    py = cy * size + rng.uniform(-0.5, 0.5) * ry * size
    d2 = (xx - px) ** 2 + (yy - py) ** 2
    img += 0.45 * np.exp(-d2 / (2 * (radius / 1.5) ** 2))
    return (float(px - radius), float(py - radius), float(2 * radius), float(2 * radius))


def make_sample(
    rng: np.random.Generator, size: int = 128, classes=SYNTHETIC_CLASSES, prevalence: float = 0.35
) -> SyntheticSample:
    img, lungs = _chest_background(rng, size)
    labels, boxes = {}, []
    for finding in classes:
        present = int(rng.random() < prevalence)
        labels[finding] = present
        if present:
            boxes.append((finding, *_plant(img, finding, rng, lungs, size)))
    pixels = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    return SyntheticSample(pixels=pixels, labels=labels, boxes=boxes)


def make_synthetic_dataset(
    root: str | Path,
    n_images: int = 120,
    size: int = 128,
    n_patients: int | None = None,
    seed: int = 0,
    classes=SYNTHETIC_CLASSES,
    prevalence: float = 0.35,
) -> tuple[Path, Path]:
    """Write ``root/images/*.png``, ``root/labels.csv`` and ``root/boxes.csv``.

    ``labels.csv`` has columns ``path, patient_id, study_id, view, <class>..., No Finding``
    (paths relative to ``root``); ``boxes.csv`` has ``path, finding, x, y, w, h`` in pixels.
    Returns the two CSV paths.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_patients = n_patients or max(1, n_images // 2)
    rows, box_rows = [], []
    for i in range(n_images):
        sample = make_sample(rng, size, classes, prevalence)
        patient = f"P{i % n_patients:05d}"
        rel = f"images/{patient}_{i:05d}.png"
        Image.fromarray(sample.pixels, mode="L").save(root / rel)
        row = {"path": rel, "patient_id": patient, "study_id": f"{patient}_{i:05d}", "view": "PA"}
        row.update(sample.labels)
        row["No Finding"] = int(not any(sample.labels.values()))
        rows.append(row)
        box_rows += [
            {"path": rel, "finding": f, "x": x, "y": y, "w": w, "h": h} for f, x, y, w, h in sample.boxes
        ]
    labels_csv, boxes_csv = root / "labels.csv", root / "boxes.csv"
    pd.DataFrame(rows).to_csv(labels_csv, index=False)
    pd.DataFrame(box_rows, columns=["path", "finding", "x", "y", "w", "h"]).to_csv(boxes_csv, index=False)
    return labels_csv, boxes_csv
