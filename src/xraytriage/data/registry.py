"""``load_dataset(kind, **options)``: every dataset from plain (YAML/CLI-friendly) options.

A training config says ``dataset: {kind: nih, root: ../shared/data/nih, views: [PA]}``; the CLI
builds the same mapping from its flags. Options common to every kind, applied after loading:
``labels`` (keep/re-index to these label names; for ``csv`` it picks the label columns) and
``abnormal: true`` (add the derived binary "Abnormal" label).

Per kind (paths may be strings):

- ``nih``: ``root`` (every image subfolder, e.g. ``images/``, ``images-64/``, ``images-b/``,
  and ``meta/``) and/or ``images`` (one folder or a list), ``meta`` (folder with the release files) or
  ``data_entry``/``bbox`` files, ``views`` (default PA+AP), ``split_file`` (path, list, or
  ``{split: path}``).
- ``chexpert``: ``csv``, ``root``, ``views``, ``frontal_only``, ``uncertainty`` (policy or
  ``{label: policy, default: policy}``), ``drop_uncertain``, ``seed``, ``nrows``.
- ``mura``: ``root`` (finds ``meta/*image_paths.csv`` and ``meta/*labeled_studies.csv``) or
  ``image_paths`` + ``studies``, ``body_parts``.
- ``fracatlas``: ``root`` (``dataset.csv``, ``images/``, ``annotations_coco.json``), optional
  ``csv``/``annotations`` files, ``body_parts`` (hand, leg, hip, shoulder), ``resolution``
  (small | large).
- ``csv``: ``csv``, ``root``, ``path_column``.
- ``folder``: ``root``, ``patient_pattern``, ``binary``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from xraytriage.data.base import RadiographDataset
from xraytriage.data.chexpert import CheXpertDataset
from xraytriage.data.csv_dataset import CSVDataset
from xraytriage.data.folder import FolderDataset
from xraytriage.data.fracatlas import FracAtlasDataset
from xraytriage.data.mura import MURADataset
from xraytriage.data.nih import BBOX_NAMES, DATA_ENTRY_NAMES, NIHChestXray14Dataset, find_meta_file
from xraytriage.errors import ConfigError, MissingFileError
from xraytriage.labels import ABNORMAL

NIH_META_FOLDER = "meta"
COMMON_OPTIONS = ("labels", "abnormal")


def _paths(value: Any) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value]


def _names(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def nih_image_folders(root: Path) -> list[Path]:
    """Every subfolder of an NIH root that is not ``meta/`` (each one a collection), sorted;
    the root itself when it has none (a flat folder of PNGs)."""
    folders = sorted(
        p for p in root.iterdir() if p.is_dir() and p.name != NIH_META_FOLDER and not p.name.startswith(".")
    )
    return folders or [root]


def _load_nih(
    root: str | None = None,
    images: str | Sequence[str] | None = None,
    meta: str | None = None,
    data_entry: str | None = None,
    bbox: str | None = None,
    views: str | Sequence[str] | None = ("PA", "AP"),
    split_file: Any = None,
) -> RadiographDataset:
    folders = _paths(images)
    if root is not None:
        root_path = Path(root)
        if not root_path.is_dir():
            raise MissingFileError(root_path, "NIH root folder")
        if not folders:
            folders = nih_image_folders(root_path)
        if meta is None and (root_path / NIH_META_FOLDER).is_dir():
            meta = str(root_path / NIH_META_FOLDER)
        elif meta is None:
            meta = str(root_path)
    if not folders:
        raise ConfigError("nih: give `root` or `images` (one or more image folders)")
    if data_entry is None:
        if meta is None:
            raise ConfigError("nih: give `meta` (folder with Data_Entry_2017*.csv[.gz]) or `data_entry`")
        found = find_meta_file(meta, DATA_ENTRY_NAMES)
        if found is None:
            raise ConfigError(f"{meta}: no {' or '.join(DATA_ENTRY_NAMES)} found")
        data_entry = str(found)
    if bbox is None and meta is not None:
        found_bbox = find_meta_file(meta, BBOX_NAMES)
        bbox = str(found_bbox) if found_bbox is not None else None
    views_list = None if views is None or views in ("all", "ALL") else _names(views)
    return NIHChestXray14Dataset(folders, data_entry, bbox, views=views_list, split_file=split_file)


def _find_one(folder: Path, pattern: str, what: str) -> Path:
    matches = sorted(folder.glob(pattern))
    if len(matches) != 1:
        raise ConfigError(f"{folder}: expected one {what} file matching {pattern!r}, found {len(matches)}")
    return matches[0]


def _load_chexpert(
    csv: str | None = None,
    root: str | None = None,
    views: str | Sequence[str] | None = None,
    frontal_only: bool = False,
    uncertainty: str | Mapping[str, str] = "U-Ignore",
    drop_uncertain: bool = False,
    seed: int = 0,
    nrows: int | None = None,
) -> RadiographDataset:
    if csv is None:
        if root is None:
            raise ConfigError("chexpert: give `csv` (train.csv / valid.csv) and `root`")
        base = Path(root)
        candidates = [base / "train.csv", *sorted((base / "meta").glob("*train*.csv*"))]
        existing = [c for c in candidates if c.is_file()]
        if not existing:
            raise ConfigError(f"{base}: no train.csv or meta/*train*.csv[.gz]; give `csv`")
        csv = str(existing[0])
    return CheXpertDataset(
        csv,
        root=root,
        views=_names(views),
        frontal_only=bool(frontal_only),
        uncertainty=uncertainty,
        drop_uncertain=bool(drop_uncertain),
        seed=int(seed),
        nrows=None if nrows is None else int(nrows),
    )


def _load_mura(
    root: str | None = None,
    image_paths: str | None = None,
    studies: str | None = None,
    body_parts: str | Sequence[str] | None = None,
) -> RadiographDataset:
    if image_paths is None or studies is None:
        if root is None:
            raise ConfigError("mura: give `root` or both `image_paths` and `studies` CSVs")
        meta = Path(root) / "meta" if (Path(root) / "meta").is_dir() else Path(root)
        image_paths = image_paths or str(_find_one(meta, "*image_paths.csv", "MURA image paths"))
        studies = studies or str(_find_one(meta, "*labeled_studies.csv", "MURA labelled studies"))
    body = _names(body_parts)
    return MURADataset(image_paths, studies, root=root, body_parts=body)


def _load_fracatlas(
    root: str | None = None,
    csv: str | None = None,
    annotations: str | None = None,
    body_parts: str | Sequence[str] | None = None,
    resolution: str | None = None,
) -> RadiographDataset:
    if root is None:
        raise ConfigError("fracatlas: give `root` (the folder with dataset.csv and images/)")
    return FracAtlasDataset(
        root, csv=csv, annotations=annotations, body_parts=_names(body_parts), resolution=resolution
    )


def _load_csv(
    csv: str | None = None,
    root: str | None = None,
    path_column: str = "path",
    labels: Sequence[str] | None = None,
) -> RadiographDataset:
    if csv is None:
        raise ConfigError("csv: give `csv` (a CSV with a path column and label columns)")
    return CSVDataset(csv, root=root, labels=_names(labels), path_column=path_column)


def _load_folder(
    root: str | None = None,
    patient_pattern: str | None = None,
    binary: bool | None = None,
) -> RadiographDataset:
    if root is None:
        raise ConfigError("folder: give `root` (a folder of class folders)")
    return FolderDataset(root, patient_pattern=patient_pattern, binary=binary)


LOADERS: dict[str, Callable[..., RadiographDataset]] = {
    "nih": _load_nih,
    "chexpert": _load_chexpert,
    "mura": _load_mura,
    "fracatlas": _load_fracatlas,
    "csv": _load_csv,
    "folder": _load_folder,
}
KIND_ALIASES = {"chestx-ray14": "nih", "chestxray14": "nih", "nih14": "nih", "image_folder": "folder"}


def dataset_options(kind: str) -> list[str]:
    """Option names ``load_dataset`` accepts for ``kind``."""
    loader = LOADERS[_kind(kind)]
    names = [p for p in inspect.signature(loader).parameters if p != "labels"]
    return [*names, *COMMON_OPTIONS]


def _kind(kind: str) -> str:
    key = str(kind).strip().lower()
    key = KIND_ALIASES.get(key, key)
    if key not in LOADERS:
        raise ConfigError(f"unknown dataset kind {kind!r}; choose one of {', '.join(LOADERS)}")
    return key


def load_dataset(kind: str, **options: Any) -> RadiographDataset:
    """Build a dataset of ``kind`` (nih | chexpert | mura | fracatlas | csv | folder) from plain options."""
    key = _kind(kind)
    options = {k: v for k, v in options.items() if v is not None}
    allowed = dataset_options(key)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"dataset kind {key!r}: unknown option(s) {unknown}; allowed: {', '.join(allowed)}")
    labels = _names(options.get("labels"))
    abnormal = bool(options.pop("abnormal", False))
    if key != "csv":
        options.pop("labels", None)
    dataset = LOADERS[key](**options)
    if abnormal:  # derived from every finding, before `labels` narrows them
        dataset = dataset.with_abnormal()
    if labels is not None and key != "csv":
        wanted = [*labels, ABNORMAL] if abnormal and ABNORMAL not in labels else labels
        dataset = dataset.select_labels(wanted)
    return dataset


def load_dataset_config(config: Mapping[str, Any]) -> RadiographDataset:
    """``{kind: ..., **options}`` (a config section) -> dataset."""
    if not isinstance(config, Mapping) or "kind" not in config:
        raise ConfigError("dataset config needs a `kind` (nih | chexpert | mura | fracatlas | csv | folder)")
    options = dict(config)
    return load_dataset(options.pop("kind"), **options)
