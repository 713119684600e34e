"""Scoring a folder of images for ``calibrate --site-normals/--site-labels/--ood-reference``:
the triage engine's reading (same decoding, scope checks, error rows) with the network's
features kept, and the site's labelled sample read from a CSV."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xraytriage.errors import ConfigError, MissingFileError
from xraytriage.io import iter_input_files
from xraytriage.labels import canonical_label

NORMAL_WORDS = {"normal", "0", "no finding", "negative", "false"}
ABNORMAL_WORDS = {"abnormal", "1", "positive", "true"}


@dataclass
class ScoredImages:
    """Calibrated probabilities (N, L), P(abnormal) (N,), features (N, D) of the readable
    images, in ``paths`` order, and the error line of each file that could not be read."""

    paths: list[str]
    probabilities: np.ndarray
    abnormal: np.ndarray
    features: np.ndarray
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Cast once, here: triage compares each probability as a Python float (float64) with the
        # thresholds, while NumPy compares a float32 array with a Python float in float32 (NEP 50),
        # so a float32 probability within rounding of a threshold could count on one side here and
        # on the other in the worklist; every rate the site calibration reports (before and after)
        # must count images as triage will flag them.
        self.probabilities = np.asarray(self.probabilities, dtype=np.float64)
        self.abnormal = np.asarray(self.abnormal, dtype=np.float64)


def score_images(
    checkpoint, inputs: Iterable[str | Path], workers: int = 1, batch_size: int = 32
) -> ScoredImages:
    """Read every image under ``inputs`` as triage does and run the network (torch: it gives
    the features whatever the ONNX file holds). Unreadable or out-of-scope files are listed
    in ``errors`` and left out; one bad file never stops the rest."""
    from tqdm import tqdm

    from xraytriage.models.inference import TorchPredictor
    from xraytriage.triage import TriageEngine, TriageOptions

    predictor = TorchPredictor(checkpoint)
    engine = TriageEngine(predictor, TriageOptions(workers=workers, progress=False))
    paths = [str(p) for p in iter_input_files(inputs)]
    kept: list[str] = []
    errors: list[str] = []
    logits, features, batch, batch_paths = [], [], [], []

    def flush() -> None:
        if batch:
            z, f = predictor.predict_with_features(np.stack(batch))
            logits.append(z)
            features.append(f)
            kept.extend(batch_paths)
            batch.clear()
            batch_paths.clear()

    for prepared in tqdm(
        engine.iter_prepared(paths), total=len(paths), unit="img", desc="scoring", leave=False
    ):
        if prepared.error is None:
            prepared = engine.out_of_scope(prepared)
        if prepared.error is not None:
            errors.append(prepared.error)
            continue
        batch.append(prepared.image)
        batch_paths.append(prepared.path)
        if len(batch) >= batch_size:
            flush()
    flush()
    if not kept:
        return ScoredImages(
            [], np.zeros((0, len(checkpoint.label_names))), np.zeros(0), np.zeros((0, 0)), errors
        )
    probs = checkpoint.probabilities(np.concatenate(logits))
    return ScoredImages(
        kept,
        probs,
        checkpoint.abnormal_probability(probs),
        np.concatenate(features).astype(np.float64),
        errors,
    )


@dataclass
class SiteLabels:
    """A labelled sample: image files, normal/abnormal, and per-finding truth where named."""

    paths: list[Path]
    abnormal: np.ndarray
    findings: dict[str, np.ndarray]


def read_site_labels(path: Path, finding_names: Sequence[str]) -> SiteLabels:
    """``--site-labels CSV``: a ``file`` column (relative to the CSV's folder, or absolute) and
    either a ``label`` column (normal/abnormal, or a finding name such as Pneumonia: that
    finding, abnormal) or one 0/1 column per finding (abnormal = any of them)."""
    if not path.is_file():
        raise MissingFileError(path, "site labels CSV")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "file" not in rows[0]:
        raise ConfigError(f"{path}: needs a 'file' column and a 'label' column or one column per finding")
    known = {canonical_label(n): n for n in finding_names}
    columns = [c for c in rows[0] if c in known or canonical_label(c) in known]
    if "label" not in rows[0] and not columns:
        raise ConfigError(f"{path}: no 'label' column and no column named after a finding of the model")
    files, abnormal = [], []
    truth = {name: [] for name in finding_names}
    for i, row in enumerate(rows, start=2):
        file = Path(row["file"])
        files.append(file if file.is_absolute() else path.parent / file)
        named = set()
        if "label" in row:
            text = (row["label"] or "").strip()
            if text.lower() in NORMAL_WORDS:
                is_abnormal = False
            elif text.lower() in ABNORMAL_WORDS:
                is_abnormal = True
            elif canonical_label(text) in known:
                is_abnormal, named = True, {known[canonical_label(text)]}
            else:
                raise ConfigError(
                    f"{path}, line {i}: label {text!r} is not normal/abnormal nor a finding of the model"
                )
        else:
            named = {
                known.get(c, known.get(canonical_label(c))) for c in columns if (row[c] or "").strip() == "1"
            }
            is_abnormal = bool(named)
        abnormal.append(is_abnormal)
        for name in finding_names:
            truth[name].append(name in named)
    return SiteLabels(files, np.array(abnormal), {n: np.array(v) for n, v in truth.items() if any(v)})
