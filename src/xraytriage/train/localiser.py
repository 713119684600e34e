"""Training the box-supervised localiser (:mod:`xraytriage.models.localiser`) and its patient-grouped CV.

Data: every image with ground-truth boxes (NIH ``BBox_List_2017``, a pixel-space
``path, finding, x, y, w, h`` CSV, or FracAtlas's fracture boxes), prepared once by the localiser's contract into a
:class:`BoxData` (uint8 inputs + boxes in input pixels), which can be saved as one ``.npz`` and
trained from anywhere (a GPU machine without the images). Targets: for each finding channel a
filled box mask; a channel is *ignored* on an image whose labels say the finding is present but
that has no box for it (the box list is incomplete), otherwise it is a negative (all zero).

Loss: binary cross-entropy over valid channels + soft Dice on channels with a box. Augmentation:
small random affine (no flips: anatomy is not mirror-symmetric), brightness/contrast/gamma.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from xraytriage.data.boxes import GroundTruth, patient_of
from xraytriage.errors import ConfigError, ImageReadError
from xraytriage.labels import canonical_label
from xraytriage.models.localiser import Localiser, LocaliserSpec, build_localiser_net
from xraytriage.train.optim import resolve_amp

log = logging.getLogger(__name__)


LOCALISER_AMP = ("auto", "bf16", "none")


@dataclass
class LocaliserTrainConfig:
    """How to train a localiser (saved with it)."""

    epochs: int = 60
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    folds: int = 5
    seed: int = 0
    augment: bool = True
    device: str = "auto"
    threads: int = 0
    """CPU threads for torch (0: leave torch's default)."""
    amp: str = "auto"
    """auto (bf16 on a GPU or on a CPU with bf16 units, as the classifier's training), bf16, none."""

    def __post_init__(self) -> None:
        if self.amp not in LOCALISER_AMP:
            raise ConfigError(f"localiser amp must be {'|'.join(LOCALISER_AMP)}, got {self.amp!r}")

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "config") -> LocaliserTrainConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown localiser training option(s): {', '.join(unknown)}")
        out = {}
        for key, value in data.items():
            kind = type(getattr(cls(), key))
            try:
                out[key] = kind(value) if kind is not bool else bool(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{source}: {key} must be a {kind.__name__}, got {value!r}") from None
        return cls(**out)


# --- data ---------------------------------------------------------------------------------
@dataclass
class BoxData:
    """Prepared box images: network inputs, boxes on the input and on the original image."""

    findings: tuple[str, ...]
    images: np.ndarray  # (N, S, S) uint8, the localiser contract's stage 1
    names: list[str]
    patients: list[str]
    sizes: np.ndarray  # (N, 2) original (height, width)
    boxes: pd.DataFrame  # index (row of images), finding, x, y, w, h (original px), x0, y0, x1, y1 (input px)
    ignore: np.ndarray  # (N, F) bool: labelled present without a box -> no target for that channel
    contract: dict[str, Any] = field(default_factory=dict)
    _input_boxes: dict | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.names)

    def input_boxes(self) -> dict[int, list[tuple[int, int, int, int, int]]]:
        """Image row -> (channel, x0, y0, x1, y1) of its boxes in whole input pixels (at least one
        pixel each); computed once, since every training batch asks for it."""
        if self._input_boxes is None:
            channel = {f: i for i, f in enumerate(self.findings)}
            out: dict[int, list[tuple[int, int, int, int, int]]] = {}
            for r in self.boxes.itertuples():
                x0, y0 = math.floor(r.x0), math.floor(r.y0)
                x1, y1 = max(x0 + 1, math.ceil(r.x1)), max(y0 + 1, math.ceil(r.y1))
                out.setdefault(int(r.index), []).append((channel[r.finding], x0, y0, x1, y1))
            self._input_boxes = out
        return self._input_boxes

    def subset(self, rows: Sequence[int]) -> BoxData:
        rows = np.asarray(rows, dtype=int)
        remap = {int(old): new for new, old in enumerate(rows)}
        boxes = self.boxes[self.boxes["index"].isin(remap)].copy()
        boxes["index"] = boxes["index"].map(remap)
        return BoxData(
            self.findings,
            self.images[rows],
            [self.names[i] for i in rows],
            [self.patients[i] for i in rows],
            self.sizes[rows],
            boxes.reset_index(drop=True),
            self.ignore[rows],
            self.contract,
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            findings=np.array(self.findings),
            images=self.images,
            names=np.array(self.names),
            patients=np.array(self.patients),
            sizes=self.sizes,
            boxes=self.boxes.to_csv(index=False),
            ignore=self.ignore,
            contract=pd.Series(self.contract).to_json(),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> BoxData:
        import io
        import json

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: box data file not found")
        try:
            z = np.load(path, allow_pickle=False)
            return cls(
                tuple(str(f) for f in z["findings"]),
                z["images"],
                [str(n) for n in z["names"]],
                [str(p) for p in z["patients"]],
                z["sizes"],
                pd.read_csv(io.StringIO(str(z["boxes"]))),
                z["ignore"].astype(bool),
                json.loads(str(z["contract"])),
            )
        except (KeyError, ValueError, OSError) as exc:
            raise ConfigError(f"{path}: not a localiser box-data file ({exc})") from None


def _labels_by_image(labels_csv: str | Path | None) -> tuple[dict[str, set[str]], dict[str, str]]:
    """Image name -> labelled findings, and -> patient, from NIH Data_Entry or a labels CSV."""
    if labels_csv is None:
        return {}, {}
    path = Path(labels_csv)
    if not path.is_file():
        raise ConfigError(f"{path}: labels file not found")
    table = pd.read_csv(path)
    if "Image Index" in table.columns and "Finding Labels" in table.columns:
        names = table["Image Index"].astype(str)
        found = {
            n: {canonical_label(v) for v in str(f).split("|")}
            for n, f in zip(names, table["Finding Labels"], strict=True)
        }
        patients = dict(zip(names, table["Patient ID"].astype(str).str.zfill(8), strict=True))
        return found, patients
    if "path" not in table.columns:
        raise ConfigError(f"{path}: expected NIH Data_Entry columns or a 'path' column")
    names = table["path"].astype(str).map(lambda p: Path(p).name)
    label_cols = [c for c in table.columns if c not in ("path", "patient_id", "study_id", "view")]
    found = {
        n: {canonical_label(c) for c in label_cols if pd.to_numeric(row[c], errors="coerce") == 1}
        for n, (_, row) in zip(names, table.iterrows(), strict=True)
    }
    patients = dict(zip(names, table["patient_id"].astype(str), strict=True)) if "patient_id" in table else {}
    return found, patients


def build_box_data(
    boxes_csv: str | Path,
    image_folders: Sequence[str | Path],
    spec: LocaliserSpec,
    labels_csv: str | Path | None = None,
    progress: bool = True,
) -> tuple[BoxData, list[str]]:
    """Read every image that has boxes for the spec's findings; returns the data and the errors
    (unreadable images are reported and skipped, never fatal)."""
    from xraytriage.data.boxes import index_images, load_ground_truth

    truth = load_ground_truth(boxes_csv)
    files = index_images(image_folders)
    labelled, patient_map = _labels_by_image(labels_csv)
    where = ", ".join(str(f) for f in image_folders)
    return pack_box_images(truth, files, spec, labelled, patient_map, progress, where)


def build_fracatlas_box_data(
    root: str | Path, spec: LocaliserSpec, progress: bool = True
) -> tuple[BoxData, list[str]]:
    """The FracAtlas fracture boxes (COCO, pixels of the files) as box data: every readable film
    with a box, its ``group`` as the patient (FracAtlas has no patient ids), the ``Fracture``
    channel ignored on a film labelled fractured that has no box."""
    from xraytriage.data.fracatlas import FRACTURE, FracAtlasDataset

    if FRACTURE not in spec.findings:
        raise ConfigError(
            f"FracAtlas boxes are {FRACTURE!r} boxes; the localiser's findings are {list(spec.findings)}"
        )
    dataset = FracAtlasDataset(root)
    names = dataset.table["path"].map(lambda p: Path(p).name)
    files = {n: Path(p) for n, p in zip(names, dataset.table["path"], strict=True)}
    patients = dict(zip(names, dataset.table["group"].astype(str), strict=True))
    fractured = dataset.labels[:, dataset.label_names.index(FRACTURE)] == 1
    labelled = {n: {FRACTURE} for n, f in zip(names, fractured, strict=True) if f}
    return pack_box_images(
        dataset.ground_truth(), files, spec, labelled, patients, progress, str(dataset.annotations_file)
    )


def pack_box_images(
    truth: GroundTruth,
    files: dict[str, Path],
    spec: LocaliserSpec,
    labelled: dict[str, set[str]],
    patient_map: dict[str, str],
    progress: bool = True,
    where: str = "",
) -> tuple[BoxData, list[str]]:
    """Box data from ground truth and image files (name -> path): each image read once by the
    spec's contract, its boxes mapped to input pixels; unreadable images are skipped and
    returned as errors."""
    from xraytriage.geometry import box_to_input
    from xraytriage.io import read_radiograph
    from xraytriage.progress import progress_bar

    table = truth.boxes[truth.boxes["finding"].isin(spec.findings)]
    table = table[table["image"].isin(files)]
    if table.empty:
        raise ConfigError(
            f"{truth.source}: no boxes of {', '.join(spec.findings)} on images found under {where}"
        )
    contract = spec.preprocess
    images, names, patients, sizes, rows, ignore, errors = [], [], [], [], [], [], []
    for name, group in progress_bar(
        list(table.groupby("image", sort=True)), desc="box images", disable=not progress
    ):
        try:
            radiograph = read_radiograph(files[name])
        except ImageReadError as exc:
            errors.append(str(exc))
            continue
        h, w = radiograph.height, radiograph.width
        sx, sy = (w / truth.reference_size, h / truth.reference_size) if truth.reference_size else (1.0, 1.0)
        index = len(names)
        for r in group.itertuples():
            x, y, bw, bh = r.x * sx, r.y * sy, r.w * sx, r.h * sy
            x0, y0, x1, y1 = box_to_input(contract, h, w, (x, y, bw, bh))
            rows.append(
                {"index": index, "finding": r.finding, "x": x, "y": y, "w": bw, "h": bh,
                 "x0": x0, "y0": y0, "x1": x1, "y1": y1}
            )  # fmt: skip
        boxed = set(group["finding"])
        present = labelled.get(name, set())
        ignore.append([f in present and f not in boxed for f in spec.findings])
        images.append(contract.to_uint8(radiograph.pixels))
        names.append(name)
        patients.append(patient_map.get(name, patient_of(name)))
        sizes.append((h, w))
    if not names:
        raise ConfigError(f"{truth.source}: none of the box images could be read: " + "; ".join(errors[:3]))
    data = BoxData(
        tuple(spec.findings),
        np.stack(images),
        names,
        patients,
        np.asarray(sizes, dtype=np.int64),
        pd.DataFrame(rows),
        np.asarray(ignore, dtype=bool),
        contract.to_dict(),
    )
    return data, errors


# --- targets and augmentation ---------------------------------------------------------------
def box_targets(data: BoxData, rows: Sequence[int], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, F, S, S) float masks and (B, F) channel weights (0 where ignored) for ``rows``."""
    masks = torch.zeros(len(rows), len(data.findings), size, size)
    valid = torch.from_numpy(~data.ignore[np.asarray(rows)]).float()
    by_index = data.input_boxes()
    for b, row in enumerate(rows):
        for channel, x0, y0, x1, y1 in by_index.get(int(row), ()):
            masks[b, channel, y0:y1, x0:x1] = 1.0
    return masks, valid


def augment_batch(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same random affine for image (bilinear) and masks (nearest); intensity jitter on the image.
    ``x`` is (B, 1, S, S) float in [0, 1]."""
    b = x.shape[0]
    dev = x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * (hi - lo) + lo).to(dev)

    scale, angle = uniform(0.9, 1.1), uniform(-0.09, 0.09)
    tx, ty = uniform(-0.06, 0.06), uniform(-0.06, 0.06)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    y = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    gamma = torch.exp(uniform(-0.25, 0.25)).view(b, 1, 1, 1)
    contrast, bright = uniform(0.85, 1.15).view(b, 1, 1, 1), uniform(-0.06, 0.06).view(b, 1, 1, 1)
    x = ((x.clamp(0, 1) ** gamma - 0.5) * contrast + 0.5 + bright).clamp(0, 1)
    return x, y


def localiser_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, dice_weight: float
) -> torch.Tensor:
    """BCE over valid channels + soft Dice over channels that have a box."""
    weight = valid[:, :, None, None].expand_as(target)
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    bce = bce / weight.sum().clamp_min(1.0)
    positive = (target.flatten(2).sum(-1) > 0) & (valid > 0)
    if dice_weight <= 0 or not bool(positive.any()):
        return bce
    prob = torch.sigmoid(logits).flatten(2)[positive]
    tgt = target.flatten(2)[positive]
    dice = 1.0 - (2 * (prob * tgt).sum(-1) + 1.0) / (prob.sum(-1) + tgt.sum(-1) + 1.0)
    return bce + dice_weight * dice.mean()


# --- training -------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_localiser(
    data: BoxData,
    spec: LocaliserSpec,
    config: LocaliserTrainConfig,
    rows: Sequence[int] | None = None,
    progress: bool = True,
    desc: str = "localiser",
) -> Localiser:
    """Train on ``rows`` of ``data`` (default all) and return the localiser (weights on CPU)."""
    from xraytriage.progress import progress_bar

    if tuple(data.findings) != tuple(spec.findings):
        raise ConfigError(
            f"box data findings {list(data.findings)} differ from the localiser's {list(spec.findings)}"
        )
    if int(data.images.shape[-1]) != int(spec.preprocess.size):
        raise ConfigError(
            f"box data was prepared at {data.images.shape[-1]} px, the localiser wants {spec.preprocess.size}"
        )
    rows = np.arange(len(data)) if rows is None else np.asarray(rows, dtype=int)
    if len(rows) == 0:
        raise ConfigError("no training images for the localiser")
    if config.threads:
        torch.set_num_threads(int(config.threads))
    torch.manual_seed(config.seed)
    device = _device(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    net = build_localiser_net(spec).to(device)
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(rows) / config.batch_size))
    total = config.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=total, pct_start=0.1
    )
    size = int(spec.preprocess.size)
    images = torch.from_numpy(data.images)
    mean, std = spec.preprocess.mean, spec.preprocess.std
    amp_dtype = resolve_amp(config.amp, device)
    log.info("%s: training on %s in %s", desc, device, "float32" if amp_dtype is None else "bfloat16")
    net.train()
    bar = progress_bar(range(config.epochs), desc=desc, unit="epoch", disable=not progress)
    for epoch in bar:
        order = rows[torch.randperm(len(rows), generator=generator).numpy()]
        running = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            x = images[batch].float().div(255.0).unsqueeze(1).to(device)
            y, valid = box_targets(data, batch, size)
            y, valid = y.to(device), valid.to(device)
            if config.augment:
                x, y = augment_batch(x, y, generator)
            x = (x - float(mean)) / float(std)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = net(x)
            loss = localiser_loss(logits.float(), y, valid, config.dice_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            running += float(loss.detach()) * len(batch)
        bar.set_postfix(loss=f"{running / len(rows):.4f}")
        if not progress:  # still leave a trace in logs of unattended runs
            log.info("%s epoch %d/%d loss %.4f", desc, epoch + 1, config.epochs, running / len(rows))
    net.eval()
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    return Localiser(spec, state, {"train_config": asdict(config), "training_images": len(rows)})


@torch.no_grad()
def predict_input_maps(
    localiser: Localiser, images: np.ndarray, device: str = "auto", batch_size: int = 32
) -> np.ndarray:
    """(N, S, S) uint8 -> (N, F, S, S) float16 probabilities."""
    dev = _device(device)
    net = localiser.net.to(dev)
    out = []
    for start in range(0, len(images), batch_size):
        x = localiser.spec.preprocess.normalize(torch.from_numpy(images[start : start + batch_size])).to(dev)
        out.append(torch.sigmoid(net(x)).float().cpu().numpy().astype(np.float16))
    net.to("cpu")
    return np.concatenate(out) if out else np.zeros((0, len(localiser.findings), 1, 1), np.float16)


def patient_folds(patients: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """Fold number per image; every patient's images in one fold (shuffled patients, round robin)."""
    unique = sorted(set(patients))
    if folds < 2 or folds > len(unique):
        raise ConfigError(f"folds must be in 2..{len(unique)} (patients), got {folds}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    fold_of = {unique[i]: k % folds for k, i in enumerate(order)}
    return np.array([fold_of[p] for p in patients], dtype=int)


def cross_validate_localiser(
    data: BoxData, spec: LocaliserSpec, config: LocaliserTrainConfig, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Patient-grouped k-fold: out-of-fold input maps (N, F, S, S) float16 and the fold of each image."""
    fold = patient_folds(data.patients, config.folds, config.seed)
    maps = np.zeros((len(data), len(data.findings), *data.images.shape[1:]), dtype=np.float16)
    for k in range(config.folds):
        train_rows, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        model = train_localiser(data, spec, config, train_rows, progress, desc=f"fold {k + 1}/{config.folds}")
        maps[held] = predict_input_maps(model, data.images[held], config.device)
    return maps, fold


def cross_validate_box_prior(data: BoxData, config: LocaliserTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The baseline a localiser must beat: per finding, the average box mask of the training
    folds' images (where that finding usually is), the same map for every held-out image."""
    fold = patient_folds(data.patients, config.folds, config.seed)
    masks, _ = box_targets(data, list(range(len(data))), int(data.images.shape[-1]))
    masks = masks.numpy()
    has = masks.reshape(len(data), len(data.findings), -1).max(-1) > 0
    maps = np.zeros_like(masks, dtype=np.float16)
    for k in range(config.folds):
        train = fold != k
        prior = masks[train].sum(0) / np.maximum(1, has[train].sum(0))[:, None, None]
        maps[fold == k] = prior
    return maps, fold
