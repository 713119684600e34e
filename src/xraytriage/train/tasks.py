"""From a dataset and ``data.task`` to the label set(s) a run trains: the network's head size
always follows from here, never from a hand-written number.

- ``multilabel``: ``data.labels`` (default: every label of the dataset, e.g. NIH 14 findings +
  No Finding, CheXpert 14 observations), optionally + the derived "Abnormal".
- ``abnormal``: one output, "Abnormal" — derived (any finding vs No Finding) or the dataset's
  own (MURA). ``data.labels`` restricts which findings count.
- ``binary_relevance``: one single-output model per label, all trained by one command into
  ``RUN/<label>/`` (the seed thesis's approach).
"""

from __future__ import annotations

from dataclasses import dataclass

from xraytriage.data.base import RadiographDataset
from xraytriage.errors import ConfigError
from xraytriage.labels import ABNORMAL, canonical_label
from xraytriage.sanitize import file_slug
from xraytriage.train.config import DatasetSpec


@dataclass(frozen=True)
class Job:
    """One network to train: its output labels and its sub-folder of the run ('' = the run)."""

    label_names: tuple[str, ...]
    subdir: str = ""


def slug(label: str) -> str:
    """A binary-relevance network's sub-folder: ``"Pleural Thickening"`` -> ``pleural_thickening``."""
    return file_slug(label, lower=True, fallback="label")


def task_dataset(dataset: RadiographDataset, spec: DatasetSpec) -> RadiographDataset:
    """The dataset re-indexed to every label the task's networks output (validated)."""
    if len(dataset) == 0:
        raise ConfigError(f"dataset {spec.kind!r} with options {spec.options} holds no images")
    labels = [canonical_label(n) for n in spec.labels] if spec.labels else list(dataset.label_names)
    if len(set(labels)) != len(labels):
        raise ConfigError(f"data.labels lists a label twice: {labels}")
    if spec.task == "abnormal":
        if ABNORMAL in dataset.label_names and not spec.labels:
            return dataset.select_labels([ABNORMAL])
        base = dataset.select_labels([n for n in labels if n != ABNORMAL])
        return base.with_abnormal().select_labels([ABNORMAL])
    if spec.task == "multilabel" and spec.add_abnormal and ABNORMAL not in labels:
        labels = [*labels, ABNORMAL]
    return dataset.select_labels(labels)


def jobs(dataset: RadiographDataset, spec: DatasetSpec) -> list[Job]:
    """The networks of this task over ``task_dataset(...)``'s labels."""
    names = tuple(dataset.label_names)
    if spec.task == "binary_relevance":
        return [Job((name,), slug(name)) for name in names]
    return [Job(names)]
