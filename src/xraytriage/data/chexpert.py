"""CheXpert (Irvin et al., AAAI 2019): train/valid CSV with 1 / 0 / -1 (uncertain) / blank.

Uncertainty policies follow the CheXpert paper (U-Ignore, U-Zeros, U-Ones, U-MultiClass) and
Pham et al. 2021 (label smoothing, LSR), chosen per label with a default:

============== ===============================================================================
U-Ignore       uncertain -> NaN (masked out of the loss, like a blank)
U-Zeros        uncertain -> 0
U-Ones         uncertain -> 1
U-MultiClass   uncertain -> 2.0, a third class: labels hold 0 / 1 / 2 / NaN, so the training
               loss must treat that column as 3-class (``uncertain_mask`` marks the same cells)
U-Ones-LSR     uncertain -> uniform(0.55, 0.85), seeded
U-Zeros-LSR    uncertain -> uniform(0, 0.3), seeded
============== ===============================================================================

Blanks are NaN (not mentioned = unknown). "No Finding" is kept consistent after the policies:
it is 0 wherever any disease label is 1. ``drop_uncertain=True`` instead removes every image
with an uncertain label (the seed thesis's option). ``uncertain_mask`` always records where
the CSV said -1, whatever the policy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.data.base import RadiographDataset
from xraytriage.errors import ConfigError, MissingFileError
from xraytriage.labels import CHEXPERT_OBSERVATIONS, NO_FINDING, NOT_DISEASE, canonical_label

POLICIES = ("U-Ignore", "U-Zeros", "U-Ones", "U-MultiClass", "U-Ones-LSR", "U-Zeros-LSR")
UNCERTAIN_CLASS = 2.0
"""Value of an uncertain label under U-MultiClass."""
LSR_RANGES = {"U-Ones-LSR": (0.55, 0.85), "U-Zeros-LSR": (0.0, 0.3)}
VIEW_NAMES = {"frontal", "lateral", "ap", "pa", "ll", "rl"}

_PATIENT = re.compile(r"(patient\d+)")
_STUDY = re.compile(r"(patient\d+)/(study\d+)")


def normalize_policy(name: str) -> str:
    """``"ones"``, ``"u-ones"``, ``"U_Ones"`` -> ``"U-Ones"``; ConfigError for anything else."""
    key = str(name).strip().lower().replace("_", "-")
    key = key if key.startswith("u-") else f"u-{key}"
    for policy in POLICIES:
        if policy.lower() == key:
            return policy
    raise ConfigError(f"unknown uncertainty policy {name!r}; choose one of {', '.join(POLICIES)}")


def resolve_policies(
    uncertainty: str | Mapping[str, str], label_names: Sequence[str], default: str = "U-Ignore"
) -> dict[str, str]:
    """One policy per label from a policy name or a ``{label: policy}`` mapping.

    A mapping may hold ``"default"`` (or ``"*"``) for the labels it does not name.
    """
    if isinstance(uncertainty, str):
        return dict.fromkeys(label_names, normalize_policy(uncertainty))
    mapping = dict(uncertainty)
    default = normalize_policy(mapping.pop("default", mapping.pop("*", default)))
    policies = dict.fromkeys(label_names, default)
    for label, policy in mapping.items():
        name = canonical_label(str(label))
        if name not in policies:
            raise ConfigError(f"uncertainty policy given for {label!r}, which is not a CheXpert label")
        policies[name] = normalize_policy(policy)
    return policies


def _view_of(frontal_lateral: str, ap_pa: str) -> str:
    if frontal_lateral.lower() == "lateral":
        return "LATERAL"
    return ap_pa.upper() if ap_pa else "FRONTAL"


def _keep_views(table: pd.DataFrame, views: Sequence[str]) -> np.ndarray:
    wanted = {str(v).strip().lower() for v in ([views] if isinstance(views, str) else views)}
    unknown = wanted - VIEW_NAMES
    if unknown:
        raise ConfigError(
            f"chexpert: unknown view(s) {sorted(unknown)}; use Frontal, Lateral, AP, PA, LL, RL"
        )
    fl = table["frontal_lateral"].str.lower()
    ap = table["ap_pa"].str.lower()
    keep = np.zeros(len(table), dtype=bool)
    for view in wanted:
        keep |= (fl == view).to_numpy() if view in ("frontal", "lateral") else (ap == view).to_numpy()
    return keep


def _dataset_root(csv_path: Path, root: str | Path | None, first_part: str) -> Path:
    """The folder the CSV paths are relative to. The CSV paths start with the dataset folder
    (``CheXpert-v1.0-small/...``), so pointing ``root`` at that folder itself works too."""
    base = Path(root) if root is not None else csv_path.parent
    return base.parent if first_part and base.name == first_part else base


class CheXpertDataset(RadiographDataset):
    """CheXpert images listed in ``csv`` under ``root`` (the folder holding ``CheXpert-v1.0-*``).

    ``views``: any of Frontal, Lateral, AP, PA, LL, RL (an image is kept if it matches one);
    ``frontal_only=True`` is ``views=("Frontal",)``. ``uncertainty``: a policy name or
    ``{label: policy, "default": policy}``. ``labels``: subset of observations to keep.
    ``nrows``: read only the first rows of the CSV (quick looks, tests).
    ``drop_uncertain`` and the "No Finding" rule look at the kept ``labels`` only.
    Table ``view`` is AP/PA/LL/RL for frontal images and LATERAL for lateral ones.
    """

    name = "chexpert"

    def __init__(
        self,
        csv: str | Path,
        root: str | Path | None = None,
        views: Sequence[str] | None = None,
        frontal_only: bool = False,
        uncertainty: str | Mapping[str, str] = "U-Ignore",
        drop_uncertain: bool = False,
        labels: Sequence[str] | None = None,
        seed: int = 0,
        nrows: int | None = None,
    ) -> None:
        csv_path = Path(csv)
        if not csv_path.is_file():
            raise MissingFileError(csv_path, "CheXpert CSV")
        raw = pd.read_csv(csv_path, nrows=nrows)
        raw.columns = [str(c).strip() for c in raw.columns]
        if "Path" not in raw.columns:
            raise ConfigError(f"{csv_path}: not a CheXpert CSV (no 'Path' column)")
        observation_cols = {
            canonical_label(c): c for c in raw.columns if canonical_label(c) in CHEXPERT_OBSERVATIONS
        }
        if not observation_cols:
            raise ConfigError(f"{csv_path}: no CheXpert observation columns found")
        label_names = [n for n in CHEXPERT_OBSERVATIONS if n in observation_cols]
        if labels is not None:
            wanted = [canonical_label(n) for n in ([labels] if isinstance(labels, str) else labels)]
            unknown = [n for n in wanted if n not in observation_cols]
            if unknown:
                raise ConfigError(f"{csv_path}: label(s) {unknown} not in CSV ({', '.join(label_names)})")
            label_names = wanted

        table = self._table(raw, csv_path, root)
        values = raw[[observation_cols[n] for n in label_names]].apply(pd.to_numeric, errors="coerce")
        values = values.to_numpy(dtype=np.float32)
        # Draw smoothing noise for every CSV cell up front, so a row's value does not depend
        # on which other rows the filters keep.
        noise = np.random.default_rng(seed).random(values.shape, dtype=np.float32)

        keep = np.ones(len(table), dtype=bool)
        if frontal_only:
            keep &= _keep_views(table, ["Frontal"])
        if views is not None:
            keep &= _keep_views(table, views)
        self.excluded_by_view = int((~keep).sum())
        uncertain = values == -1
        self.dropped_uncertain = 0
        if drop_uncertain:
            has_uncertain = uncertain.any(axis=1) & keep
            self.dropped_uncertain = int(has_uncertain.sum())
            keep &= ~has_uncertain

        self.policies = resolve_policies(uncertainty, label_names)
        matrix = self.apply_policies(values[keep], noise[keep], label_names, self.policies)
        self.uncertain_mask = uncertain[keep]
        self.drop_uncertain = bool(drop_uncertain)
        self.source = str(csv_path)
        super().__init__(table[keep], matrix, label_names)

    # --- construction helpers ------------------------------------------------------------
    @staticmethod
    def _table(raw: pd.DataFrame, csv_path: Path, root: str | Path | None) -> pd.DataFrame:
        rel = raw["Path"].astype(str).str.replace("\\", "/", regex=False)
        first = rel.iloc[0].split("/", 1)[0] if len(rel) else ""
        base = _dataset_root(csv_path, root, first)
        base_text = str(base.resolve())
        patient = rel.str.extract(_PATIENT, expand=False).fillna("")
        study = rel.str.extract(_STUDY)
        study_id = (study[0].fillna("") + "/" + study[1].fillna("")).where(study[1].notna(), rel)
        fl = raw.get("Frontal/Lateral", pd.Series([""] * len(raw))).fillna("").astype(str)
        ap = raw.get("AP/PA", pd.Series([""] * len(raw))).fillna("").astype(str)
        split = rel.map(
            lambda p: "valid" if "/valid/" in f"/{p}" else ("train" if "/train/" in f"/{p}" else "")
        )
        return pd.DataFrame(
            {
                "path": (base_text + "/" + rel).to_numpy(),
                "relative_path": rel.to_numpy(),
                "patient_id": patient.to_numpy(),
                "study_id": study_id.to_numpy(),
                "view": [_view_of(f, a) for f, a in zip(fl, ap, strict=True)],
                "frontal_lateral": fl.to_numpy(),
                "ap_pa": ap.to_numpy(),
                "sex": raw.get("Sex", pd.Series([""] * len(raw))).fillna("").astype(str).to_numpy(),
                "age": pd.to_numeric(
                    raw.get("Age", pd.Series([np.nan] * len(raw))), errors="coerce"
                ).to_numpy(),
                "split": split.to_numpy(),
            }
        )

    @staticmethod
    def apply_policies(
        values: np.ndarray, noise: np.ndarray, label_names: Sequence[str], policies: Mapping[str, str]
    ) -> np.ndarray:
        """Raw CSV values (1/0/-1/NaN) -> label matrix; then make "No Finding" consistent."""
        out = values.astype(np.float32).copy()
        for j, name in enumerate(label_names):
            policy = policies[name]
            cells = values[:, j] == -1
            if policy == "U-Ignore":
                out[cells, j] = np.nan
            elif policy == "U-Zeros":
                out[cells, j] = 0.0
            elif policy == "U-Ones":
                out[cells, j] = 1.0
            elif policy == "U-MultiClass":
                out[cells, j] = UNCERTAIN_CLASS
            else:
                lo, hi = LSR_RANGES[policy]
                out[cells, j] = lo + (hi - lo) * noise[cells, j]
        if NO_FINDING in label_names:
            disease = [j for j, n in enumerate(label_names) if n not in NOT_DISEASE]
            if disease:
                any_positive = (out[:, disease] == 1).any(axis=1)
                out[any_positive, list(label_names).index(NO_FINDING)] = 0.0
        return out

    def _derive(self, table, labels, label_names):
        clone = super()._derive(table, labels, label_names)
        # ``self.table`` has a 0..N-1 index, so ``table.index`` holds our row numbers.
        rows = table.index.to_numpy()
        column = {n: j for j, n in enumerate(self.label_names)}
        mask = np.zeros((len(rows), len(label_names)), dtype=bool)
        for k, name in enumerate(label_names):
            j = column.get(canonical_label(name))
            if j is not None:
                mask[:, k] = self.uncertain_mask[rows, j]
        clone.uncertain_mask = mask
        return clone

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        for j, name in enumerate(self.label_names):
            if j < self.uncertain_mask.shape[1]:
                info["labels"][name]["uncertain"] = int(self.uncertain_mask[:, j].sum())
        info.update(
            {
                "policies": dict(self.policies),
                "excluded_by_view": self.excluded_by_view,
                "dropped_uncertain": self.dropped_uncertain,
            }
        )
        return info
