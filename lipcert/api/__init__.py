"""The public Python API: load or wrap a model, certify batches and datasets, compare models.

Library functions here take values (floats, arrays, tensors), never command-line strings;
they do not print and do not modify their arguments.
"""

from lipcert.api.attack import AttackReport, attack_certificates
from lipcert.api.data import DatasetReport, certify_dataset, dataset_locations, load_dataset
from lipcert.api.metric import CertifiedAccuracy, RobustnessMetric
from lipcert.api.model import CertifiedBatch, Model, from_torch, load

__all__ = [
    "AttackReport",
    "CertifiedAccuracy",
    "CertifiedBatch",
    "DatasetReport",
    "Model",
    "RobustnessMetric",
    "attack_certificates",
    "certify_dataset",
    "dataset_locations",
    "from_torch",
    "load",
    "load_dataset",
]
