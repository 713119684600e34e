"""The registry of published models (``published_models.json``): its entries, their operating
points and input contracts; reading only, no torch, no network, no cache.

It sits below both :mod:`~xraytriage.models.published` (fetch, cache, the ``--model`` rule) and
:mod:`~xraytriage.models.import_weights` (turning an entry's weights into a checkpoint), so the
two no longer import each other (issue #27). :mod:`published` re-exports every name here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xraytriage.errors import ConfigError
from xraytriage.preprocess import PreprocessContract

REGISTRY_FORMAT = "xraytriage-published-models"
REGISTRY_PATH = Path(__file__).with_name("published_models.json")
ARCHITECTURES = ("densenet121", "resnet50")
FORMATS = ("module_pickle", "state_dict", "checkpoint_dict")
THRESHOLD_SPACES = ("probability", "sigmoid_of_probability")
"""What a model's published threshold values cut: the sigmoid probability p itself, or sigmoid(p)
(torchxrayvision's resnet50-res512-all: its calibration script applied the sigmoid twice, so the
cut-off on p is logit(value))."""
OPERATING_POINTS = {
    "youden": (
        "the publisher's op_threshs: max(sensitivity - false-positive rate) per finding on the "
        "publisher's own data (for its DenseNets mostly their training images); low cut-offs, so "
        "'flag if any finding' over many findings flags most studies"
    ),
    "ppv80": (
        "the publisher's ppv80_thres: the cut-off where precision first exceeds 0.8 on the "
        "publisher's own data; far fewer flags, lower sensitivity"
    ),
}
"""Operating points a published model may carry (name -> what it means); ``youden`` is the default."""
DEFAULT_OPERATING_POINT = "youden"


@dataclass(frozen=True)
class PublishedModel:
    name: str
    url: str
    architecture: str
    format: str
    labels: tuple[str, ...]
    input: PreprocessContract
    licence: str
    citation: str
    publisher: str = ""
    description: str = ""
    sha256: str | None = None
    size_bytes: int | None = None
    op_thresholds: tuple[float | None, ...] | None = None
    ppv80_thresholds: tuple[float | None, ...] | None = None
    threshold_space: str = "probability"
    reported: str = ""
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1] or "weights"

    @property
    def valid_outputs(self) -> list[int]:
        """Indices of the outputs the publisher trained and evaluated: a non-empty label and, where
        the publisher gives operating thresholds, a threshold (resnet50-res512-all's Lung Lesion and
        Enlarged Cardiomediastinum have none and AUC 0.5 in its BENCHMARKS.md: no training data)."""
        return [
            i
            for i, label in enumerate(self.labels)
            if label.strip() and (self.op_thresholds is None or self.op_thresholds[i] is not None)
        ]

    def dropped_reason(self, index: int) -> str:
        """Why output ``index`` is not converted ('' when it is)."""
        if not self.labels[index].strip():
            return "not trained"
        if self.op_thresholds is not None and self.op_thresholds[index] is None:
            return "no threshold published"
        return ""

    def check_operating_point(self, name: str) -> None:
        """Raise ConfigError unless ``name`` is a known point this model publishes (a model that
        publishes none accepts the default: its findings keep 0.5)."""
        if name not in OPERATING_POINTS:
            raise ConfigError(f"unknown operating point {name!r}: one of {', '.join(OPERATING_POINTS)}")
        points = self.operating_points()
        if name not in points and (points or name != DEFAULT_OPERATING_POINT):
            raise ConfigError(
                f"{self.name}: its publisher gives no {name!r} thresholds "
                f"(published: {', '.join(points) or 'none'})"
            )

    def operating_points(self) -> dict[str, list[float | None]]:
        """Each published operating point as cut-offs on the sigmoid probability, per source output
        (None: none for that output): the published values, or logit(value) where the publisher's
        values are sigmoid(p) (``threshold_space``)."""
        out: dict[str, list[float | None]] = {}
        for name, values in (("youden", self.op_thresholds), ("ppv80", self.ppv80_thresholds)):
            if values is not None:
                out[name] = [None if t is None else _to_probability(t, self.threshold_space) for t in values]
        return out

    def provenance(self) -> dict[str, Any]:
        """What a converted checkpoint records about where it came from."""
        return {
            "registry": self.name,
            "publisher": self.publisher,
            "url": self.url,
            "format": self.format,
            "architecture": self.architecture,
            "licence": self.licence,
            "citation": self.citation,
            "reported": self.reported,
            "sources": dict(self.sources),
            "source_outputs": list(self.labels),
            "valid_outputs": self.valid_outputs,
            "op_thresholds": list(self.op_thresholds) if self.op_thresholds else None,
            "ppv80_thresholds": list(self.ppv80_thresholds) if self.ppv80_thresholds else None,
            "threshold_space": self.threshold_space,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> PublishedModel:
        name = str(data.get("name", "")).strip()
        ctx = f"{where}: model {name or '?'}"
        for key in ("name", "url", "architecture", "format", "labels", "input", "licence", "citation"):
            if not data.get(key):
                raise ConfigError(f"{ctx}: missing {key!r}")
        if data["architecture"] not in ARCHITECTURES:
            raise ConfigError(
                f"{ctx}: architecture must be one of {ARCHITECTURES}, got {data['architecture']!r}"
            )
        if data["format"] not in FORMATS:
            raise ConfigError(f"{ctx}: format must be one of {FORMATS}, got {data['format']!r}")
        if not str(data["url"]).startswith(("https://", "http://")):
            raise ConfigError(f"{ctx}: url must be http(s), got {data['url']!r}")
        labels = tuple(str(x) for x in data["labels"])
        if not any(label.strip() for label in labels):
            raise ConfigError(f"{ctx}: no valid output (every label is empty)")
        space = str(data.get("threshold_space") or "probability")
        if space not in THRESHOLD_SPACES:
            raise ConfigError(f"{ctx}: threshold_space must be one of {THRESHOLD_SPACES}, got {space!r}")
        thresholds = _threshold_list(data, "op_thresholds", labels, space, ctx)
        ppv80 = _threshold_list(data, "ppv80_thresholds", labels, space, ctx)
        sha = data.get("sha256")
        if sha is not None and (
            len(str(sha)) != 64 or any(c not in "0123456789abcdef" for c in str(sha).lower())
        ):
            raise ConfigError(f"{ctx}: sha256 must be 64 hex digits")
        try:
            contract = PreprocessContract.from_dict(dict(data["input"]))
        except ConfigError as exc:
            raise ConfigError(f"{ctx}: input: {exc}") from None
        known = set(cls.__dataclass_fields__) | {"note"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{ctx}: unknown field(s) {', '.join(unknown)}")
        return cls(
            name=name,
            url=str(data["url"]),
            architecture=str(data["architecture"]),
            format=str(data["format"]),
            labels=labels,
            input=contract,
            licence=str(data["licence"]),
            citation=str(data["citation"]),
            publisher=str(data.get("publisher", "")),
            description=str(data.get("description", "")),
            sha256=str(sha).lower() if sha else None,
            size_bytes=int(data["size_bytes"]) if data.get("size_bytes") else None,
            op_thresholds=thresholds,
            ppv80_thresholds=ppv80,
            threshold_space=space,
            reported=str(data.get("reported", "")),
            sources={str(k): str(v) for k, v in (data.get("sources") or {}).items()},
        )


def _to_probability(value: float, space: str) -> float:
    if space == "sigmoid_of_probability":
        return math.log(value / (1.0 - value))
    return value


def _threshold_list(
    data: dict[str, Any], key: str, labels: tuple[str, ...], space: str, ctx: str
) -> tuple[float | None, ...] | None:
    """A published threshold list, checked: one per label, each a cut-off its space can hold
    (sigmoid(p) for p in [0, 1] lies in [0.5, sigmoid(1)]: a value outside says the space is wrong)."""
    values = data.get(key)
    if values is None:
        return None
    if len(values) != len(labels):
        raise ConfigError(f"{ctx}: {len(values)} {key} for {len(labels)} labels")
    out = tuple(None if t is None else float(t) for t in values)
    low, high = (0.5, 1.0 / (1.0 + math.exp(-1.0))) if space == "sigmoid_of_probability" else (0.0, 1.0)
    bad = [t for t in out if t is not None and not (low <= t <= high)]
    if bad:
        raise ConfigError(
            f"{ctx}: {key} value {bad[0]} is not a cut-off on {space.replace('_', ' ')} "
            f"(must lie in [{low:.4g}, {high:.4g}])"
        )
    return out


def load_registry(path: str | Path | None = None) -> dict[str, PublishedModel]:
    """The registry by model name (the shipped one, or ``path``)."""
    path = Path(path) if path else REGISTRY_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: model registry not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable model registry ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
        raise ConfigError(f"{path}: not an xraytriage model registry (format {REGISTRY_FORMAT!r} expected)")
    models: dict[str, PublishedModel] = {}
    for item in data.get("models") or []:
        entry = PublishedModel.from_dict(item, str(path))
        if entry.name in models:
            raise ConfigError(f"{path}: model {entry.name} listed twice")
        models[entry.name] = entry
    return models


def get_model(name: str, registry: dict[str, PublishedModel] | None = None) -> PublishedModel:
    registry = registry if registry is not None else load_registry()
    if name not in registry:
        raise ConfigError(
            f"unknown published model {name!r}; `xraytriage models list` shows: {', '.join(registry)}"
        )
    return registry[name]
