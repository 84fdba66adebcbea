"""Whether a dataset's labels can name the classes of the model it is certified with."""

from __future__ import annotations

from lipcert.datasets.catalog import CATALOG, SPLITS
from lipcert.datasets.dataset import Dataset
from lipcert.errors import DatasetError


def check_model_classes(data: Dataset, num_classes: int) -> None:
    """Refuse an image folder or a named dataset whose number of classes is not the model's.

    An image folder's labels are its class folders' positions in name order (torchvision's
    ImageFolder): they are the model's class indices only with one sub-folder per class of
    the model. With one folder missing (a class without validation images) every label after
    it names the next class; a 10-class subset of ImageNet gets labels 0..9, not the model's
    indices of those classes. A named dataset's labels are its own classes: CIFAR-10's 0..9
    under a CIFAR-100 model are 'apple' .. 'bottle', not 'airplane' .. 'truck'. Either way
    every label is in the model's range, so nothing else would stop it. A file (.npz, .csv)
    need not hold every class: only more classes than the model's are refused.
    """
    if data.split == "folder":
        what = f"{data.source}: {data.num_classes} class folders"
        why = (
            "the labels are the folders' positions in name order, which are the model's "
            "classes only with one sub-folder per class of the model"
        )
    elif data.name in CATALOG and data.split in SPLITS:
        what = f"{data.name}: {data.num_classes} classes"
        why = (
            f"the labels are {data.name}'s classes, which a {num_classes}-class model does not have"
        )
        if data.name == "cifar100" and num_classes == 20:
            why += " (lipcert reads the 100 fine labels; for the 20 coarse ones, use an .npz)"
    elif data.split == "file":
        # A file's num_classes is taken over all its labels (.npz: also beyond --limit), so a
        # 1-based file (labels 1..K) sorted by class is caught though its first rows fit.
        # (Labels read that already exceed the model get the pipeline's message on them.)
        if data.num_classes > num_classes and int(data.labels.max()) < num_classes:
            raise DatasetError(
                f"{data.source}: its labels name {data.num_classes} classes (0.."
                f"{data.num_classes - 1}, or one-hot of that width) but the model predicts "
                f"{num_classes}: are the labels 1-based? class indices start at 0"
            )
        return
    else:
        return  # a Dataset built by the caller: its labels are checked against the model
    if data.num_classes != num_classes:
        raise DatasetError(f"{what} but the model predicts {num_classes} classes: {why}")
