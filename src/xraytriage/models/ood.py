"""How unlike the training images an image is: the out-of-distribution score.

A network answers every image, including ones from a population it never saw (children for
an adult model, another hospital's detector). Its own pooled penultimate features tell: an
image whose features sit far from the training images' features is read outside what the
model learnt. The reference is the training images' feature mean and a Ledoit-Wolf shrunk
covariance (well conditioned with a few thousand images in 256+ dimensions), stored in the
checkpoint as a whitening matrix ``W`` (``W W^T`` = inverse covariance):

    distance = || (features - mean) @ W ||          (the Mahalanobis distance)
    ood_score = distance / threshold_distance       (1.0 = the warning line)

``threshold_distance`` is a high percentile (default 99th) of the training images' own
distances, so about 1% of training images score >= 1 and everything above that is warned
about. Numpy only: the triage engine and the ONNX path use it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xraytriage.errors import ConfigError

DEFAULT_PERCENTILE = 99.0
METHOD = "mahalanobis-ledoit-wolf"
OOD_WARNING = "unlike the training images"
MIN_REFERENCE_IMAGES = 50
OOD_SCORE_LINE = 1.0
"""The warning line in ``ood_score`` units (scores are distances over the warning distance)."""


def _short(value: float) -> float:
    """7 significant digits: float32 precision, half the size in the ONNX file's JSON."""
    return float(f"{float(value):.7g}")


@dataclass
class OodReference:
    """The training images' feature statistics and the warning line."""

    mean: np.ndarray
    whiten: np.ndarray
    threshold: float
    percentile: float = DEFAULT_PERCENTILE
    images: int = 0
    source: str = ""
    method: str = METHOD

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` (N, D) from the reference."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ConfigError(
                f"OOD reference has {self.dim} feature dimensions; the network gave shape {features.shape}"
            )
        return np.linalg.norm((features - self.mean) @ self.whiten, axis=1)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``ood_score`` per row: distance / warning distance (>= 1 is warned about)."""
        return (self.distances(features) / self.threshold).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers: safe for ``torch.load(weights_only=True)`` and JSON."""
        return {
            "method": self.method,
            "mean": [_short(v) for v in self.mean],
            "whiten": [[_short(v) for v in row] for row in self.whiten],
            "threshold": float(self.threshold),
            "percentile": float(self.percentile),
            "images": int(self.images),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OodReference:
        if data.get("method", METHOD) != METHOD:
            raise ConfigError(f"unknown OOD reference method {data.get('method')!r}")
        mean = np.asarray(data["mean"], dtype=np.float64)
        whiten = np.asarray(data["whiten"], dtype=np.float64)
        if whiten.shape != (mean.shape[0], mean.shape[0]) or float(data["threshold"]) <= 0:
            raise ConfigError("OOD reference: whitening matrix and mean disagree, or threshold <= 0")
        return cls(
            mean=mean,
            whiten=whiten,
            threshold=float(data["threshold"]),
            percentile=float(data.get("percentile", DEFAULT_PERCENTILE)),
            images=int(data.get("images", 0)),
            source=str(data.get("source", "")),
        )


def fit_reference(
    features: np.ndarray, percentile: float = DEFAULT_PERCENTILE, source: str = ""
) -> OodReference:
    """Reference statistics from the training images' features (N, D)."""
    from sklearn.covariance import LedoitWolf  # here: sklearn is only needed when fitting

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < MIN_REFERENCE_IMAGES:
        raise ConfigError(
            f"an OOD reference needs features of at least {MIN_REFERENCE_IMAGES} images, got shape {features.shape}"
        )
    if not 50 <= percentile < 100:
        raise ConfigError(f"OOD percentile must be in [50, 100), got {percentile}")
    lw = LedoitWolf().fit(features)
    precision = np.linalg.inv(lw.covariance_)
    precision = (precision + precision.T) / 2
    whiten = np.linalg.cholesky(precision)  # precision = L L^T, so ||d @ L|| is the distance
    reference = OodReference(lw.location_, whiten, 1.0, percentile, len(features), source)
    reference.threshold = float(np.percentile(reference.distances(features), percentile))
    return reference


def ood_warning(score: float | None) -> str | None:
    """The worklist warning for an image whose ``ood_score`` reaches the line, else None."""
    if score is None or not np.isfinite(score) or score < OOD_SCORE_LINE:
        return None
    return (
        f"{OOD_WARNING} (ood_score {score:.2f} >= 1): another population or device? "
        "check the findings against the image"
    )
