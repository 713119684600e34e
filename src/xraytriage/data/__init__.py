"""Datasets: one class per source, harmonised labels, patient ids kept; splits; the uint8 cache."""

from xraytriage.data.base import RadiographDataset
from xraytriage.data.cache import CacheBuildReport, ImageCache
from xraytriage.data.chexpert import CheXpertDataset
from xraytriage.data.csv_dataset import CSVDataset
from xraytriage.data.folder import FolderDataset
from xraytriage.data.fracatlas import FracAtlasDataset
from xraytriage.data.mura import MURADataset
from xraytriage.data.nih import NIHChestXray14Dataset
from xraytriage.data.registry import load_dataset, load_dataset_config
from xraytriage.data.splits import (
    PatientLeakError,
    assert_patient_disjoint,
    kfold_indices,
    patient_kfold,
    split_dataset,
    train_val_test_split,
)
from xraytriage.data.torch_dataset import UInt8Dataset

__all__ = [
    "CSVDataset",
    "CacheBuildReport",
    "CheXpertDataset",
    "FolderDataset",
    "FracAtlasDataset",
    "ImageCache",
    "MURADataset",
    "NIHChestXray14Dataset",
    "PatientLeakError",
    "RadiographDataset",
    "UInt8Dataset",
    "assert_patient_disjoint",
    "kfold_indices",
    "load_dataset",
    "load_dataset_config",
    "patient_kfold",
    "split_dataset",
    "train_val_test_split",
]
