"""Dataset readers: CIFAR-10/100, MNIST, Fashion-MNIST and .npz files, all as one Dataset.

Every reader validates what it reads (shapes, dtypes, label ranges, sizes against headers)
and reports any problem as a DatasetError naming the file. No reader runs code from a data
file: CIFAR pickles go through a restricted unpickler, .npz files load with
allow_pickle=False.
"""

from __future__ import annotations

from lipcert.datasets.catalog import KNOWN_DATASETS
from lipcert.datasets.dataset import Dataset
from lipcert.datasets.load import load_dataset
from lipcert.datasets.locate import DatasetLocation, dataset_locations

__all__ = ["KNOWN_DATASETS", "Dataset", "DatasetLocation", "dataset_locations", "load_dataset"]
