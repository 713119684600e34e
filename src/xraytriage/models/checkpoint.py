"""The checkpoint contract: everything triage, explain, evaluate and serve need, in one file.

A checkpoint is a plain dict saved with ``torch.save`` and loaded with ``weights_only=True``
(no pickled code, safe to load from others):

    format, format_version, package_version, created
    model          ModelConfig as dict
    label_names    output order of the network
    preprocess     PreprocessContract as dict
    state_dict     weights (optionally stored in float16)
    thresholds     {label: operating threshold on the calibrated probability}
    calibration    {label: {"method": "temperature", "t": T} | {"method": "platt", "a": a, "b": b}},
                   each with an optional "shift" added to the calibrated logit (prior shift from the
                   calibration set's prevalence to a stated deployment prevalence)
    abnormal       how to get P(abnormal): {"label": L, "invert": bool} or {"rule": "noisy_or"};
                   optionally "flag_by": "findings" (a site calibration: a study is flagged
                   when a finding is listed, not by the P(abnormal) threshold)
    train_config   the resolved training config (dict), data_fingerprint, metrics, notes
    training_images  file names of the images the weights were trained on (so triage and
                   evaluation can say when they are shown images the model has already seen)
    scope          what the model reads: {"body_parts": ["CHEST"], "views": ["PA", "AP"],
                   "age_years": [min, max]} (optional; checkpoints without it get
                   ``scope.default_scope``; without "age_years" no age is checked)
    critical       {finding: threshold}: findings that need a radiologist now, each at its own
                   high-specificity threshold (``calibrate --critical``; optional, none without it)
    expected_rates {"flagged": r, "findings": {name: r}, "ood": r}: the flag rates calibration
                   expects at deployment, which the service's drift monitor compares with (optional)
    ood            optional out-of-distribution reference (``models.ood.OodReference`` as a
                   dict): the training images' feature statistics and the warning line
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xraytriage import __version__
from xraytriage.errors import ConfigError, MissingFileError, XRayTriageError
from xraytriage.labels import ABNORMAL, NO_FINDING, NOT_DISEASE
from xraytriage.models.factory import ModelConfig, build_model
from xraytriage.models.ood import OodReference
from xraytriage.preprocess import PreprocessContract
from xraytriage.scope import default_scope

FORMAT = "xraytriage-checkpoint"
FORMAT_VERSION = 1
NOISY_OR = {"rule": "noisy_or"}
"""The abnormal rule of a model without an Abnormal or No Finding output."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


@dataclass
class Checkpoint:
    model: ModelConfig
    label_names: list[str]
    preprocess: PreprocessContract
    state_dict: dict[str, torch.Tensor]
    thresholds: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    abnormal: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    training_images: list[str] = field(default_factory=list)
    name: str = "xraytriage-model"
    package_version: str = __version__
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    scope: dict[str, list[str]] | None = None
    """Body parts and views the model was trained on (see :mod:`xraytriage.scope`); None: the
    default for its training data. Images outside it are refused, never given findings."""
    localiser: dict[str, Any] | None = None
    """The box-supervised localiser (:class:`xraytriage.models.localiser.Localiser` as a dict),
    when one was attached: it draws the boxes of the findings it covers instead of Grad-CAM."""
    critical: dict[str, float] = field(default_factory=dict)
    """Critical findings and their own thresholds (``triage.reasons``); empty: no critical tier."""
    expected_rates: dict[str, Any] | None = None
    """Expected flag rates (``serving.drift`` compares the service's rolling rates with them)."""
    ood: dict[str, Any] | None = None
    """The out-of-distribution reference (:class:`xraytriage.models.ood.OodReference` as a
    dict), set by ``xraytriage calibrate --ood-reference``; None: no ``ood_score``."""

    def __post_init__(self) -> None:
        if len(self.label_names) != self.model.num_classes:
            raise ConfigError(
                f"checkpoint has {len(self.label_names)} label names but the model has {self.model.num_classes} outputs"
            )
        if not self.abnormal:
            self.abnormal = default_abnormal_rule(self.label_names)
        if self.scope is None:
            self.scope = default_scope(self.label_names, self.train_config)

    def get_localiser(self):
        """The attached :class:`~xraytriage.models.localiser.Localiser` (built once), or None."""
        if not self.localiser:
            return None
        cached = getattr(self, "_localiser", None)
        if cached is None:
            from xraytriage.models.localiser import Localiser

            cached = Localiser.from_dict(self.localiser)
            object.__setattr__(self, "_localiser", cached)
        return cached

    def ood_reference(self) -> OodReference | None:
        """The out-of-distribution reference (built once), or None when the file has none."""
        if not self.ood:
            return None
        cached = getattr(self, "_ood", None)
        if cached is None or cached[0] is not self.ood:  # rebuilt when ``ood`` is replaced
            cached = (self.ood, OodReference.from_dict(self.ood))
            object.__setattr__(self, "_ood", cached)
        return cached[1]

    # --- network -------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The network with these weights, in eval mode, float32."""
        net = build_model(self.model)
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()}
        net.load_state_dict(state)
        return net.eval()

    # --- probabilities -------------------------------------------------------------------
    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, L) from raw logits (N, L)."""
        logits = np.asarray(logits, dtype=np.float64)
        out = np.empty_like(logits)
        for j, name in enumerate(self.label_names):
            cal = self.calibration.get(name)
            z = logits[:, j]
            if cal and cal.get("method") == "temperature":
                z = z / float(cal["t"])
            elif cal and cal.get("method") == "platt":
                z = float(cal["a"]) * z + float(cal["b"])
            if cal:
                z = z + float(cal.get("shift", 0.0))
            out[:, j] = _sigmoid(z)
        return out.astype(np.float32)

    def abnormal_probability(self, probs: np.ndarray) -> np.ndarray:
        """P(study not normal) per row of calibrated probabilities."""
        return abnormal_probability(probs, self.label_names, self.abnormal).astype(np.float32)

    def threshold(self, label: str) -> float:
        return float(self.thresholds.get(label, 0.5))

    @property
    def study_flag_threshold(self) -> float | None:
        """P(abnormal) at or above which a study is flagged: the Abnormal output's operating
        threshold when the model has one (None: flag a study when any finding is flagged, also
        where the abnormal rule says ``"flag_by": "findings"``)."""
        rule = self.abnormal
        if rule.get("flag_by") == "findings":  # a site calibration's choice (calibrate --site-normals)
            return None
        if rule.get("label") == ABNORMAL and ABNORMAL in self.thresholds:
            return float(self.thresholds[ABNORMAL])
        return None

    def study_flagged(self, abnormal: Any, any_finding: Any) -> Any:
        """The study flag (bool, or a bool array for arrays): P(abnormal) at or above the study
        threshold, or, without one, any finding listed. The one rule the worklist, the site
        calibration and its check use."""
        at = self.study_flag_threshold
        flagged = np.asarray(any_finding, dtype=bool) if at is None else np.asarray(abnormal) >= at
        return bool(flagged) if flagged.ndim == 0 else flagged

    def seen_in_training(self, paths: list[str]) -> list[str]:
        """The paths whose file name is one of this model's training images."""
        if not self.training_images:
            return []
        names = set(self.training_images)
        return [p for p in paths if Path(p).name in names]

    @property
    def findings(self) -> list[str]:
        """Output labels that are findings (not No Finding / Abnormal)."""
        return [n for n in self.label_names if n not in (NO_FINDING, ABNORMAL)]

    # --- persistence ---------------------------------------------------------------------
    def to_dict(self, half: bool = False) -> dict[str, Any]:
        state = {
            k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
            for k, v in self.state_dict.items()
        }
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": self.package_version,
            "created": self.created,
            "name": self.name,
            "model": self.model.to_dict(),
            "label_names": list(self.label_names),
            "preprocess": self.preprocess.to_dict(),
            "state_dict": state,
            "thresholds": {k: float(v) for k, v in self.thresholds.items()},
            "calibration": self.calibration,
            "abnormal": self.abnormal,
            "train_config": self.train_config,
            "data_fingerprint": self.data_fingerprint,
            "metrics": self.metrics,
            "training_images": list(self.training_images),
            "scope": self.scope,
            **({"localiser": self.localiser} if self.localiser else {}),
            **({"critical": {k: float(v) for k, v in self.critical.items()}} if self.critical else {}),
            **({"expected_rates": self.expected_rates} if self.expected_rates else {}),
            **({"ood": self.ood} if self.ood else {}),
        }

    def save(self, path: str | Path, half: bool = False) -> Path:
        """Write atomically (a crash never leaves a half-written checkpoint)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.to_dict(half=half), tmp)
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        if data.get("format") != FORMAT:
            raise XRayTriageError("not an xraytriage checkpoint (missing format marker)")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise XRayTriageError(
                f"checkpoint format {data['format_version']} is newer than this xraytriage supports ({FORMAT_VERSION})"
            )
        return cls(
            model=ModelConfig.from_dict(data["model"]),
            label_names=list(data["label_names"]),
            preprocess=PreprocessContract.from_dict(data["preprocess"]),
            state_dict=data["state_dict"],
            thresholds=dict(data.get("thresholds", {})),
            calibration=dict(data.get("calibration", {})),
            abnormal=dict(data.get("abnormal", {})),
            train_config=dict(data.get("train_config", {})),
            data_fingerprint=str(data.get("data_fingerprint", "")),
            metrics=dict(data.get("metrics", {})),
            training_images=[str(n) for n in data.get("training_images", [])],
            name=str(data.get("name", "xraytriage-model")),
            package_version=str(data.get("package_version", "?")),
            created=str(data.get("created", "")),
            scope=dict(data["scope"]) if isinstance(data.get("scope"), dict) else None,
            localiser=dict(data["localiser"]) if isinstance(data.get("localiser"), dict) else None,
            critical={str(k): float(v) for k, v in (data.get("critical") or {}).items()},
            expected_rates=dict(data["expected_rates"])
            if isinstance(data.get("expected_rates"), dict)
            else None,
            ood=dict(data["ood"]) if isinstance(data.get("ood"), dict) else None,
        )


def abnormal_probability(
    probs: np.ndarray, label_names: Sequence[str], rule: dict[str, Any] | None = None
) -> np.ndarray:
    """P(abnormal) per row of probabilities (N, L) by ``rule`` (default: the rule a checkpoint
    with these labels gets): an Abnormal output, 1 - No Finding, or the noisy-OR of the findings.
    One definition for the worklist, out-of-fold summaries and other models' predictions."""
    probs = np.asarray(probs, dtype=np.float64)
    names = list(label_names)
    rule = rule or default_abnormal_rule(names)
    if "label" in rule:
        p = probs[:, names.index(rule["label"])]
        return 1.0 - p if rule.get("invert") else p
    disease = [i for i, n in enumerate(names) if n not in NOT_DISEASE]
    return 1.0 - np.prod(1.0 - probs[:, disease], axis=1)


def default_abnormal_rule(label_names: list[str]) -> dict[str, Any]:
    if ABNORMAL in label_names:
        return {"label": ABNORMAL, "invert": False}
    if NO_FINDING in label_names:
        return {"label": NO_FINDING, "invert": True}
    return dict(NOISY_OR)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint file; a published model's NAME and ``path=None``-style defaults are
    resolved by the caller (``models.published.resolve_model``: the checkpoint layer does not
    import the download and conversion code that itself builds checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise XRayTriageError(f"{path}: cannot load checkpoint: {exc}") from None
    if not isinstance(data, dict):
        raise XRayTriageError(f"{path}: not an xraytriage checkpoint")
    try:
        return Checkpoint.from_dict(data)
    except XRayTriageError as exc:
        raise XRayTriageError(f"{path}: {exc}") from None
