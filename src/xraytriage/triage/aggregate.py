"""A study's probabilities from its images' probabilities.

- ``max``: the most suspicious image decides (default; a finding seen on one view counts).
- ``mean``: average over views (smooths one noisy view; MURA's study-level convention).
- ``noisy_or``: 1 - prod(1 - p), views as independent chances to show the finding (rises
  with the number of suspicious views; can exceed every single image's probability).
"""

from __future__ import annotations

import numpy as np

from xraytriage.errors import ConfigError

AGGREGATIONS = ("max", "mean", "noisy_or")


def check_aggregation(method: str) -> str:
    if method not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation {method!r}; choose one of: {', '.join(AGGREGATIONS)}")
    return method


def aggregate_probabilities(probs: np.ndarray, method: str = "max") -> np.ndarray:
    """(n_images, L) or (n_images,) probabilities -> (L,) or scalar for the study."""
    check_aggregation(method)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[0] == 0:
        raise ValueError("a study needs at least one image to aggregate")
    if method == "max":
        out = probs.max(axis=0)
    elif method == "mean":
        out = probs.mean(axis=0)
    else:
        out = 1.0 - np.prod(1.0 - np.clip(probs, 0.0, 1.0), axis=0)
    return np.clip(out, 0.0, 1.0)
