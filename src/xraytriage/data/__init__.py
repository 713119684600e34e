"""Datasets: one class per source, harmonised labels, patient ids kept; splits; the uint8 cache."""

from xraytriage.data.base import RadiographDataset
from xraytriage.data.csv_dataset import CSVDataset
from xraytriage.data.torch_dataset import UInt8Dataset

__all__ = ["CSVDataset", "RadiographDataset", "UInt8Dataset"]
