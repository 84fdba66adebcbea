"""Train lipcert's sample 1-Lipschitz models on Fashion-MNIST, reproducibly.

Each model is a plain ``lipcert.zoo`` module. During training, deel-torchlip's weight
normalisations are attached to its layers as parametrizations, the same stacks that
deel-torchlip's layers use:

- convolutions, as ``SpectralConv2d``: ``spectral_norm``, then ``bjorck_norm``, then
  ``lconv_norm`` (a fixed rescaling by 1/3 for a 3x3 stride-1 kernel, 1/2 for stride 2);
- hidden linear layers, as ``SpectralLinear``: ``spectral_norm``, then ``bjorck_norm``;
- the head, as ``FrobeniusLinear``: ``frobenius_norm(disjoint_neurons=True)``, each row
  of unit norm.

After training the parametrizations are removed in eval mode with
``leave_parametrized=True``: the normalised weights become plain parameters, and the
saved state_dict has the zoo's keys. Each model is written as ``<name>.safetensors``
and ``<name>.onnx``; the ONNX logits are checked against torch's.

Usage (needs ``pip install -e ".[train]"`` for deel-torchlip)::

    python sample_models/train.py                 # every model, then the bundled data
    python sample_models/train.py --only NAME     # one model (repeatable)
    python sample_models/train.py --list
    python sample_models/train.py --out DIR --data /path/to/fashion-mnist

Inputs are pixels / 255 in [0, 1], with no mean/std standardisation, so that radii are
stated in that space. The accuracy and margin printed here are a quick check of the
training, not certificates: lipcert computes those from the weights.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import struct
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from deel import torchlip
from deel.torchlip.utils import bjorck_norm, frobenius_norm, lconv_norm
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lipcert import zoo  # the repository root is put on sys.path just above
from lipcert.datasets.catalog import CATALOG

DEFAULT_DATA = Path("/usr/share/datasets/fashion-mnist")
HERE = Path(__file__).resolve().parent

FASHION_MNIST_CLASSES = CATALOG["fashion-mnist"].class_names
# The binary task: Sneaker (label 0) against Ankle boot (label 1).
BINARY_PAIR = (7, 9)

# deel-torchlip's defaults (deel.torchlip.normalizers.DEFAULT_EPS_SPECTRAL / _BJORCK).
EPS_SPECTRAL = 1e-3
EPS_BJORCK = 1e-3


@dataclass(frozen=True)
class Spec:
    """One sample model: architecture, data, loss and training schedule."""

    name: str
    factory: str  # a function name in lipcert.zoo
    task: str  # "fmnist", "fmnist_binary" or "fmnist_as_cifar"
    loss: str  # a deel.torchlip.modules loss class name
    loss_kwargs: dict[str, float] = field(default_factory=dict)
    epochs: int = 3
    lr: float = 2e-3
    batch_size: int = 256
    seed: int = 0

    @property
    def loss_text(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.loss_kwargs.items())
        return f"{self.loss}({args})"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, 32, 32) if self.task == "fmnist_as_cifar" else (1, 28, 28)

    @property
    def trained_on(self) -> str:
        if self.task == "fmnist_binary":
            a, b = BINARY_PAIR
            return (
                f"Fashion-MNIST train set, classes {FASHION_MNIST_CLASSES[a]} ({a}) -> 0 and "
                f"{FASHION_MNIST_CLASSES[b]} ({b}) -> 1, 1x28x28, pixels/255"
            )
        if self.task == "fmnist_as_cifar":
            return (
                "Fashion-MNIST train set rendered as 3x32x32 (zero-padded 28->32, grey "
                "replicated to 3 channels), pixels/255; NOT CIFAR-10"
            )
        return "Fashion-MNIST train set (60,000 images), 1x28x28, pixels/255"


SPECS: tuple[Spec, ...] = (
    Spec("fmnist_ce_tau128", "fashion_mnist_lipnet", "fmnist", "TauCrossEntropyLoss",
         {"tau": 128.0}),
    Spec("fmnist_ce_tau32", "fashion_mnist_lipnet", "fmnist", "TauCrossEntropyLoss",
         {"tau": 32.0}),
    Spec("fmnist_ce_tau8", "fashion_mnist_lipnet", "fmnist", "TauCrossEntropyLoss",
         {"tau": 8.0}),
    Spec("fmnist_ce_tau2", "fashion_mnist_lipnet", "fmnist", "TauCrossEntropyLoss",
         {"tau": 2.0}),
    Spec("fmnist_hkr_alpha0p98_m0p5", "fashion_mnist_lipnet", "fmnist", "HKRMulticlassLoss",
         {"alpha": 0.98, "min_margin": 0.5}),
    Spec("fmnist_hkr_alpha0p98_m2", "fashion_mnist_lipnet", "fmnist", "HKRMulticlassLoss",
         {"alpha": 0.98, "min_margin": 2.0}),
    Spec("fmnist_binary_hkr_alpha0p98_m1", "fashion_mnist_binary_lipnet", "fmnist_binary",
         "HKRLoss", {"alpha": 0.98, "min_margin": 1.0}, epochs=4),
    Spec("cifar10_shaped_ce_tau16", "cifar10_lipnet", "fmnist_as_cifar",
         "TauCrossEntropyLoss", {"tau": 16.0}, epochs=2),
)  # fmt: skip


# ---------------------------------------------------------------- data


def read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file (the MNIST format) into a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (header {data[:4]!r})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).copy()
    if body.size != math.prod(dims):
        raise ValueError(f"{path}: expected {math.prod(dims)} values, found {body.size}")
    return body.reshape(dims)


@dataclass
class Split:
    x: np.ndarray  # uint8 (N, 1, 28, 28)
    y: np.ndarray  # int64 (N,)


def load_fashion_mnist(folder: Path) -> tuple[Split, Split]:
    """The official train and test splits, in file order."""

    def split(prefix: str) -> Split:
        x = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")[:, None, :, :]
        y = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        return Split(np.ascontiguousarray(x), y)

    return split("train"), split("t10k")


def binary_subset(s: Split) -> Split:
    """The images of the binary pair, in file order, labelled 0 and 1."""
    a, b = BINARY_PAIR
    keep = (s.y == a) | (s.y == b)
    return Split(s.x[keep], (s.y[keep] == b).astype(np.int64))


def to_input(x: np.ndarray, task: str) -> torch.Tensor:
    """uint8 images to the model's float input: pixels / 255, shaped for the task."""
    t = torch.from_numpy(x).to(torch.float32) / 255.0
    if task == "fmnist_as_cifar":
        t = F.pad(t, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()
    return t


def batches(
    s: Split, task: str, batch_size: int, generator: torch.Generator | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches, shuffled by ``generator`` (or in file order when it is None)."""
    n = len(s.y)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size].numpy()
        yield to_input(s.x[idx], task), torch.from_numpy(s.y[idx])


# ---------------------------------------------------------------- Lipschitz training


def attach_lipschitz_parametrizations(model: nn.Sequential) -> None:
    """Attach deel-torchlip's normalisations to every layer, as its own layers do.

    Weights are first initialised as deel-torchlip does (orthogonal, zero bias).
    """
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    head = layers[-1]
    for m in layers:
        nn.init.orthogonal_(m.weight)
        nn.init.zeros_(m.bias)
        if m is head:
            frobenius_norm(m, name="weight", disjoint_neurons=True)
            continue
        spectral_norm(m, name="weight", eps=EPS_SPECTRAL)
        bjorck_norm(m, name="weight", eps=EPS_BJORCK)
        if isinstance(m, nn.Conv2d):
            lconv_norm(m, name="weight")


def bake_parametrizations(model: nn.Sequential, refresh: torch.Tensor) -> None:
    """Replace every parametrized weight by its normalised value, as a plain parameter.

    Björck's parametrization caches its result in training mode and returns the cache
    in eval mode; the cache is from the forward before the last optimiser step, so one
    training-mode forward without gradients first brings it (and the power iteration's
    vectors) up to date with the final weights.
    """
    model.train()
    with torch.no_grad():
        model(refresh)
    model.eval()
    for m in model:
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def make_loss(spec: Spec) -> nn.Module:
    return getattr(torchlip, spec.loss)(**spec.loss_kwargs)


def loss_target(spec: Spec, y: torch.Tensor, outputs: int) -> torch.Tensor:
    """Labels in the format each deel-torchlip loss expects."""
    if spec.loss == "TauCrossEntropyLoss":
        return y  # class indices
    if outputs == 1:
        return y.to(torch.float32).unsqueeze(1)  # 0/1 column; the losses use target > 0
    return F.one_hot(y, outputs).to(torch.float32)  # one-hot 0/1


@torch.no_grad()
def evaluate(model: nn.Module, s: Split, task: str) -> dict[str, float]:
    """Clean accuracy and mean margin (own quick check, not a certificate).

    Multiclass: the margin is top-1 minus top-2 logit. Binary: the margin is |logit|.
    Also the mean signed margin: positive when right, negative when wrong.
    """
    model.eval()
    correct, margin, signed = 0, 0.0, 0.0
    for x, y in batches(s, task, 1000, None):
        out = model(x)
        if out.shape[1] == 1:
            pred = (out[:, 0] > 0).long()
            m = out[:, 0].abs()
        else:
            top = out.topk(2, dim=1).values
            pred = out.argmax(dim=1)
            m = top[:, 0] - top[:, 1]
        right = pred == y
        correct += int(right.sum())
        margin += float(m.sum())
        signed += float(torch.where(right, m, -m).sum())
    n = len(s.y)
    return {"accuracy": correct / n, "mean_margin": margin / n, "mean_signed_margin": signed / n}


@torch.no_grad()
def layer_norm_estimates(model: nn.Sequential, input_shape: tuple[int, ...]) -> dict[str, float]:
    """Largest singular value of each layer's linear map, by power iteration.

    A lower estimate of the exact norm, printed to show how far from 1 the normalised
    layers are (convolutions on their real input size, zero padding); never a bound.
    """
    g = torch.Generator().manual_seed(1234)
    shape: tuple[int, ...] = (1, *input_shape)
    norms: dict[str, float] = {}
    for name, m in model.named_children():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            x = torch.randn(shape, generator=g)
            sigma = 0.0
            for _ in range(200):
                x = x / x.norm()
                if isinstance(m, nn.Conv2d):
                    y = F.conv2d(x, m.weight, None, m.stride, m.padding)
                    x = _conv_adjoint(m, y, x.shape)
                else:
                    y = x @ m.weight.T
                    x = y @ m.weight
                sigma = float(y.norm())
            norms[name] = sigma
            shape = tuple(y.shape)
        elif isinstance(m, nn.Flatten):
            shape = (1, math.prod(shape[1:]))
    return norms


def _conv_adjoint(m: nn.Conv2d, y: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    out_pad = [
        x_shape[2 + i] - ((y.shape[2 + i] - 1) * m.stride[i] - 2 * m.padding[i] + m.kernel_size[i])
        for i in range(2)
    ]
    return F.conv_transpose2d(y, m.weight, None, m.stride, m.padding, tuple(out_pad))


def train_one(spec: Spec, train: Split, test: Split, out_dir: Path) -> dict[str, object]:
    torch.manual_seed(spec.seed)
    factory: Callable[[], nn.Sequential] = getattr(zoo, spec.factory)
    model = factory()
    attach_lipschitz_parametrizations(model)
    loss_fn = make_loss(spec)
    outputs = model.head.out_features
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    steps = spec.epochs * math.ceil(len(train.y) / spec.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps)
    order = torch.Generator().manual_seed(spec.seed)

    print(f"== {spec.name}: {spec.factory}, {spec.loss_text}, {spec.epochs} epochs, "
          f"batch {spec.batch_size}, Adam lr {spec.lr} (one-cycle), seed {spec.seed}")  # fmt: skip
    start = time.perf_counter()
    for epoch in range(1, spec.epochs + 1):
        model.train()
        total, correct, seen = 0.0, 0, 0
        for x, y in batches(train, spec.task, spec.batch_size, order):
            out = model(x)
            loss = loss_fn(out, loss_target(spec, y, outputs))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            pred = (out[:, 0] > 0).long() if outputs == 1 else out.argmax(dim=1)
            correct += int((pred == y).sum())
            seen += len(y)
        print(f"  epoch {epoch}/{spec.epochs}  loss {total / seen:.4f}  "
              f"train acc {correct / seen:.4f}  {time.perf_counter() - start:.0f} s")  # fmt: skip
    train_seconds = time.perf_counter() - start

    bake_parametrizations(model, to_input(train.x[:256], spec.task))
    plain = factory()
    plain.load_state_dict(model.state_dict(), strict=True)  # the zoo's keys, nothing else
    plain.eval()

    metrics = evaluate(plain, test, spec.task)
    norms = layer_norm_estimates(plain, spec.input_shape)
    print(
        f"  test acc {metrics['accuracy']:.4f}  mean margin {metrics['mean_margin']:.4f}  "
        f"mean signed margin {metrics['mean_signed_margin']:.4f}  ({train_seconds:.0f} s)"
    )
    print("  layer norms (power iteration): "
          + ", ".join(f"{k} {v:.3f}" for k, v in norms.items()))  # fmt: skip

    save_model(spec, plain, out_dir, to_input(test.x[:64], spec.task))
    return {
        "name": spec.name,
        "arch": f"lipcert.zoo:{spec.factory}",
        "loss": spec.loss_text,
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        "lr": spec.lr,
        "seed": spec.seed,
        "train_seconds": round(train_seconds, 1),
        **{k: round(v, 4) for k, v in metrics.items()},
        "layer_norms_power_iteration": {k: round(v, 4) for k, v in norms.items()},
    }


# ---------------------------------------------------------------- export


def save_model(spec: Spec, model: nn.Module, out_dir: Path, check: torch.Tensor) -> None:
    """Write ``<name>.safetensors`` and ``<name>.onnx``; check ONNX logits against torch's."""
    import onnxruntime as ort

    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "arch": f"lipcert.zoo:{spec.factory}",
        "input_shape": ",".join(map(str, spec.input_shape)),
        "input_range": "[0, 1]: uint8 pixels / 255, not standardised",
        "loss": spec.loss_text,
        "trained_on": spec.trained_on,
    }
    weights_path = out_dir / f"{spec.name}.safetensors"
    save_file(state, str(weights_path), metadata=metadata)
    weights_path.chmod(0o644)  # safetensors creates the file readable by its owner only

    onnx_path = out_dir / f"{spec.name}.onnx"
    with warnings.catch_warnings():
        # The legacy TorchScript exporter is chosen on purpose: it is what deel-torchlip
        # users export with. GroupSort2's channel check is constant for a traced shape.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (check[:1],),
            str(onnx_path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": check.numpy()})[0]
    with torch.no_grad():
        want = model(check).numpy()
    err = float(np.abs(got - want).max())
    if not err <= 1e-5:
        raise RuntimeError(f"{onnx_path}: ONNX logits differ from torch's by {err:.3g} > 1e-5")
    print(f"  wrote {spec.name}.safetensors and .onnx (ONNX vs torch max diff {err:.2g})")


def write_bundled_data(test: Split, out_dir: Path) -> None:
    """The first 1000 test images, and the first 1000 of the binary pair, as npz."""
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(data_dir / "fashion_mnist_test_1000.npz", x=test.x[:1000], y=test.y[:1000])
    pair = binary_subset(test)
    np.savez_compressed(
        data_dir / "fashion_mnist_binary_test_1000.npz", x=pair.x[:1000], y=pair.y[:1000]
    )
    print(f"wrote bundled test data in {data_dir}")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="train only this model")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: here)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder of the Fashion-MNIST IDX .gz files")  # fmt: skip
    parser.add_argument("--epochs", type=int, help="override the epochs (quick trials only)")
    parser.add_argument("--limit-train", type=int, metavar="N",
                        help="train on the first N images only (quick trials only)")  # fmt: skip
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress in logs

    if args.list:
        for s in SPECS:
            print(f"{s.name:34s} {s.factory:28s} {s.loss_text}, {s.epochs} epochs")
        return 0
    names = {s.name for s in SPECS}
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        parser.error(f"unknown model {unknown!r}; known: {', '.join(sorted(names))}")
    specs = [s for s in SPECS if not args.only or s.name in args.only]
    if args.epochs is not None:
        specs = [Spec(**{**s.__dict__, "epochs": args.epochs}) for s in specs]

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    full_train, test = load_fashion_mnist(args.data)
    if not args.only:
        write_bundled_data(test, args.out)

    start = time.perf_counter()
    results = []
    for spec in specs:
        train = binary_subset(full_train) if spec.task == "fmnist_binary" else full_train
        if args.limit_train:
            train = Split(train.x[: args.limit_train], train.y[: args.limit_train])
        task_test = binary_subset(test) if spec.task == "fmnist_binary" else test
        results.append(train_one(spec, train, task_test, args.out))
    total = time.perf_counter() - start

    print(f"\nSummary ({total:.0f} s in all, {torch.get_num_threads()} thread)")
    print(f"{'model':34s} {'test acc':>8s} {'margin':>8s} {'signed':>8s} {'train s':>8s}")
    for r in results:
        print(f"{r['name']:34s} {r['accuracy']:8.4f} {r['mean_margin']:8.4f} "
              f"{r['mean_signed_margin']:8.4f} {r['train_seconds']:8.0f}")  # fmt: skip
    summary_path = args.out / "train_summary.json"
    old = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    models = {**old.get("models", {}), **{r["name"]: r for r in results}}
    summary = {"models": {s.name: models[s.name] for s in SPECS if s.name in models}}
    if not args.only:
        summary["total_seconds"] = round(total, 1)
    elif "total_seconds" in old:
        summary["total_seconds"] = old["total_seconds"]
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
