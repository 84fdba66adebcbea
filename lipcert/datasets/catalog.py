"""What lipcert knows about each named dataset: its classes and how to get its files."""

from __future__ import annotations

from dataclasses import dataclass

KNOWN_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "fashion-mnist")
SPLITS: tuple[str, ...] = ("test", "train")


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about a named dataset that do not depend on where its files are."""

    name: str
    num_classes: int
    # None where the names come from the dataset's own files (CIFAR-100's meta file).
    class_names: tuple[str, ...] | None
    how_to_get: str


_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

CATALOG: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        how_to_get=(
            f"download cifar-10-python.tar.gz from {_CIFAR_URL} and extract it into a folder "
            "given as data_dir= (--data-dir) or in $LIPCERT_DATA"
        ),
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        num_classes=100,
        class_names=None,
        how_to_get=(
            f"download cifar-100-python.tar.gz from {_CIFAR_URL} and extract it into a folder "
            "given as data_dir= (--data-dir) or in $LIPCERT_DATA"
        ),
    ),
    "mnist": DatasetInfo(
        name="mnist",
        num_classes=10,
        class_names=tuple(str(digit) for digit in range(10)),
        how_to_get=(
            "put the IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (from "
            "https://ossci-datasets.s3.amazonaws.com/mnist/, or torchvision.datasets.MNIST(root, "
            "download=True), which writes <root>/MNIST/raw) into a folder given as data_dir= "
            "(--data-dir) or in $LIPCERT_DATA"
        ),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        num_classes=10,
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        how_to_get=(
            "run `apt-get install dataset-fashion-mnist` (Debian, Ubuntu), or download the four "
            "IDX .gz files from https://github.com/zalandoresearch/fashion-mnist into a folder "
            "given as data_dir= (--data-dir) or in $LIPCERT_DATA"
        ),
    ),
}


def canonical_name(name: str) -> str | None:
    """The known dataset `name` refers to ("CIFAR-10", "fashion_mnist" ...), or None."""
    wanted = _squash(name)
    for known in KNOWN_DATASETS:
        if _squash(known) == wanted:
            return known
    return None


def _squash(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")
