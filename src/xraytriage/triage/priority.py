"""Priority of a study in [0, 1]: the model's abnormal probability, optionally boosted by
per-finding urgency weights, and never below the priority the site already gave.

Model priority with urgency weights ``w_f`` in [0, 1] (a weighted noisy-OR; with no weights
it is just the abnormal probability)::

    priority = 1 - (1 - abnormal) * prod_f (1 - w_f * p_f)

Site priority (DICOM RequestedProcedurePriority, or a ``--site-priority`` CSV) is a floor,
not a precedence::

    priority = max(model priority, site priority)

so a HIGH study (0.8) the model scores 0.3 ranks at 0.8, below a study the model scores 0.9:
the site says "at least this urgent", the model can still find another study more urgent.
At equal priority the study with the higher site priority goes first (``sort_worklist``;
the service's worklist orders the same way): a STAT study (1.0) is never below a study the
model scores 1.0, so STAT always goes first: even before studies in the critical tier
(``triage.reasons``), which go before every other study.

Named levels map to: STAT 1.0, HIGH 0.8, MEDIUM 0.5, ROUTINE 0.0, LOW 0.0 (ROUTINE/LOW add
no floor, so routine studies keep the model's order among themselves).
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xraytriage.errors import ConfigError
from xraytriage.labels import canonical_label

SITE_PRIORITY_LEVELS: dict[str, float] = {
    "STAT": 1.0,
    "HIGH": 0.8,
    "MEDIUM": 0.5,
    "ROUTINE": 0.0,
    "LOW": 0.0,
}


def parse_site_priority(value: object) -> float | None:
    """A level name (STAT/HIGH/MEDIUM/ROUTINE/LOW, any case) or a number in [0, 1] -> float.

    Blank -> ``None`` (no site priority). Raises ConfigError for anything else.
    """
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    level = SITE_PRIORITY_LEVELS.get(text.upper())
    if level is not None:
        return level
    try:
        number = float(text)
    except ValueError:
        raise ConfigError(
            f"site priority {text!r} is neither a number in [0, 1] nor one of {', '.join(SITE_PRIORITY_LEVELS)}"
        ) from None
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"site priority {number} is outside [0, 1]")
    return number


def dicom_site_priority(meta: dict) -> float | None:
    """The floor from a DICOM RequestedProcedurePriority tag; unknown values are ignored."""
    try:
        return parse_site_priority(meta.get("priority"))
    except ConfigError:
        return None


@dataclass
class UrgencyWeights:
    """Per-finding urgency weights in [0, 1], e.g. ``{"Pneumothorax": 1.0, "Effusion": 0.3}``."""

    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean: dict[str, float] = {}
        for name, value in self.weights.items():
            try:
                weight = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"urgency weight for {name!r} is not a number: {value!r}") from None
            if not 0.0 <= weight <= 1.0:
                raise ConfigError(f"urgency weight for {name!r} must be in [0, 1], got {weight}")
            clean[canonical_label(str(name))] = weight
        self.weights = clean

    @classmethod
    def load(cls, path: str | Path) -> UrgencyWeights:
        """YAML or JSON: ``{weights: {Finding: w, ...}}`` or the bare mapping."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read urgency config: {exc}") from None
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:
            raise ConfigError(f"{path}: not valid YAML/JSON: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("weights"), dict):
            data = data["weights"]
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of finding name to weight")
        try:
            return cls(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def vector(self, label_names: Sequence[str]) -> np.ndarray:
        """Weights in the model's label order; names the model does not output are an error."""
        index = {canonical_label(n): i for i, n in enumerate(label_names)}
        unknown = sorted(set(self.weights) - set(index))
        if unknown:
            raise ConfigError(
                f"urgency weights name finding(s) the model does not output: {', '.join(unknown)} "
                f"(model labels: {', '.join(label_names)})"
            )
        out = np.zeros(len(label_names), dtype=np.float64)
        for name, weight in self.weights.items():
            out[index[name]] = weight
        return out


class SitePriorities:
    """Priorities the site already gave, from a CSV with a ``priority`` column and a ``study``
    and/or ``path`` column. Values: a number in [0, 1] or STAT/HIGH/MEDIUM/ROUTINE/LOW."""

    def __init__(self, by_key: dict[str, float] | None = None) -> None:
        self.by_key = dict(by_key or {})

    @staticmethod
    def _keys(value: str) -> list[str]:
        keys = [value]
        with contextlib.suppress(OSError, RuntimeError):
            keys.append(str(Path(value).expanduser().resolve()))
        return keys

    @classmethod
    def load(cls, path: str | Path) -> SitePriorities:
        path = Path(path)
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
                if "priority" not in fields or not ({"study", "path"} & set(fields)):
                    raise ConfigError(
                        f"{path}: site priority CSV needs a 'priority' column and a 'study' or 'path' column "
                        f"(found: {', '.join(reader.fieldnames or []) or 'none'})"
                    )
                by_key: dict[str, float] = {}
                for line, record in enumerate(reader, start=2):
                    try:
                        value = parse_site_priority(record.get(fields["priority"]))
                    except ConfigError as exc:
                        raise ConfigError(f"{path}, line {line}: {exc}") from None
                    if value is None:
                        continue
                    for column in ("study", "path"):
                        key = (record.get(fields.get(column, ""), "") or "").strip()
                        if key:
                            for k in cls._keys(key):
                                by_key[k] = max(value, by_key.get(k, 0.0))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read site priority CSV: {exc}") from None
        return cls(by_key)

    def lookup(self, study: str, paths: Iterable[str] = ()) -> float | None:
        """The highest site priority given to the study or to any of its images."""
        found = [self.by_key[k] for item in (study, *paths) for k in self._keys(item) if k in self.by_key]
        return max(found) if found else None


@dataclass
class PriorityRules:
    """Turns a study's calibrated probabilities into its priority; see the module docstring."""

    label_names: Sequence[str]
    urgency: UrgencyWeights | None = None
    site: SitePriorities | None = None

    def __post_init__(self) -> None:
        self._weights = (
            self.urgency.vector(self.label_names)
            if self.urgency is not None
            else np.zeros(len(self.label_names), dtype=np.float64)
        )

    def model_priority(self, abnormal: float, probs: np.ndarray) -> float:
        probs = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
        stay_low = (1.0 - float(abnormal)) * float(np.prod(1.0 - self._weights * probs))
        return float(np.clip(1.0 - stay_low, 0.0, 1.0))

    def site_priority(
        self, study: str, paths: Sequence[str] = (), tag_priorities: Iterable[float | None] = ()
    ) -> float | None:
        given = [p for p in tag_priorities if p is not None]
        if self.site is not None:
            from_csv = self.site.lookup(study, paths)
            if from_csv is not None:
                given.append(from_csv)
        return max(given) if given else None

    def priority(self, abnormal: float, probs: np.ndarray, site_priority: float | None = None) -> float:
        model = self.model_priority(abnormal, probs)
        return model if site_priority is None else max(model, float(site_priority))


def flag_point(checkpoint: object) -> float | None:
    """Where a model's study flag sits on its own P(abnormal) scale: the study threshold, or,
    for a one-finding model flagged by its finding (the fracture model), that finding's
    threshold; None when no single number says it (then its priorities are not rescaled)."""
    at = getattr(checkpoint, "study_flag_threshold", None)
    if at is not None:
        return float(at)
    findings = list(getattr(checkpoint, "findings", []) or [])
    return float(checkpoint.threshold(findings[0])) if len(findings) == 1 else None  # type: ignore[attr-defined]


def on_reference_scale(
    model_priority: float, own: float | None, reference: float | None, site_priority: float | None = None
) -> float:
    """One urgency scale across models: ``model_priority`` moved onto the reference model's
    scale by shifting its log-odds so that its own flag point lands on the reference's
    (a study at k times its own threshold odds ranks with a reference study at k times the
    reference threshold odds). The reference model's priorities stay as they are; a site
    priority stays a floor on the common scale, never rescaled."""
    p = float(model_priority)
    if own is not None and reference is not None and own != reference and 0.0 < p < 1.0:
        eps = 1e-9
        own_c, ref_c = (min(max(float(t), eps), 1.0 - eps) for t in (own, reference))
        shift = np.log(ref_c / (1.0 - ref_c)) - np.log(own_c / (1.0 - own_c))
        p = float(1.0 / (1.0 + np.exp(-(np.log(p / (1.0 - p)) + shift))))
    return p if site_priority is None else max(p, float(site_priority))
