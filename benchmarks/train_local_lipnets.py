"""Train the two small LipNets that the local-certificate benchmark and tests use.

    nice -n 10 python benchmarks/train_local_lipnets.py [--epochs 3] [--out tests/local/fixtures]

Fashion-MNIST (1x28x28, pixels / 255), two architectures that differ only in the activation:
conv 4x4/2 1->16 (14x14), conv 4x4/2 16->32 (7x7), flatten 1568, linear 1568->128, head
128->10, with ReLU or GroupSort2 after every layer but the head. Each weight is kept
orthonormal during training (a QR factorisation of a free matrix: orthonormal rows or
columns of the kernel reshaped to (out, in*k*k)); a 4x4 stride-2 convolution covers each
pixel at most 4 times, so its kernel is scaled by 1/2. The layers are then close to
1-Lipschitz, which lipcert measures from the baked weights, never trusting the construction.
Loss: cross-entropy of tau * logits (tau = 8) plus a hinge on the margin; Adam, 1 thread.
The ONNX files (TorchScript exporter, opset 17, dynamic batch) are about 0.66 MB each.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipcert.datasets import load_dataset
from lipcert.zoo import GroupSort2


class _Orthonormal(nn.Module):
    """W = Q of a free matrix: orthonormal rows (out <= in) or columns, reshaped."""

    def __init__(self, out_features: int, in_shape: tuple[int, ...], scale: float = 1.0) -> None:
        super().__init__()
        fan_in = int(np.prod(in_shape))
        self.free = nn.Parameter(torch.randn(out_features, fan_in) / fan_in**0.5)
        self.shape = (out_features, *in_shape)
        self.scale = scale

    def weight(self) -> torch.Tensor:
        matrix = self.free
        if matrix.shape[0] <= matrix.shape[1]:
            q, r = torch.linalg.qr(matrix.T)
            w = (q * torch.sign(torch.diagonal(r))).T
        else:
            q, r = torch.linalg.qr(matrix)
            w = q * torch.sign(torch.diagonal(r))
        return (w * self.scale).reshape(self.shape)


class _Conv(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.param = _Orthonormal(c_out, (c_in, 4, 4), scale=0.5)
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.param.weight(), self.bias, stride=2, padding=1)

    def baked(self) -> nn.Conv2d:
        w = self.param.weight().detach()
        conv = nn.Conv2d(w.shape[1], w.shape[0], 4, stride=2, padding=1)
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(self.bias.detach())  # type: ignore[union-attr]  # bias=True
        return conv


class _Linear(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.param = _Orthonormal(n_out, (n_in,))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.param.weight(), self.bias)

    def baked(self) -> nn.Linear:
        w = self.param.weight().detach()
        layer = nn.Linear(w.shape[1], w.shape[0])
        layer.weight.data.copy_(w)
        layer.bias.data.copy_(self.bias.detach())
        return layer


def _activation(kind: str) -> nn.Module:
    return nn.ReLU() if kind == "relu" else GroupSort2()


def build(kind: str) -> nn.Sequential:
    return nn.Sequential(
        _Conv(1, 16),
        _activation(kind),
        _Conv(16, 32),
        _activation(kind),
        nn.Flatten(),
        _Linear(1568, 128),
        _activation(kind),
        _Linear(128, 10),
    )


def bake(model: nn.Sequential) -> nn.Sequential:
    layers = [m.baked() if isinstance(m, _Conv | _Linear) else m for m in model]
    return nn.Sequential(*layers).eval()


def train(kind: str, epochs: int, seconds: float, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    data = load_dataset("fashion-mnist", split="train")
    images = torch.as_tensor(data.images.astype(np.float32) / 255.0)
    labels = torch.as_tensor(np.asarray(data.labels, dtype=np.int64))
    model = build(kind)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * (len(images) // 256)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 4e-3, total_steps=steps)
    started = time.perf_counter()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images) - 255, 256):
            index = order[start : start + 256]
            logits = model(images[index])
            target = labels[index]
            tau = 8.0
            loss = F.cross_entropy(tau * logits, target) / tau
            true = logits.gather(1, target[:, None])
            others = logits.masked_fill(F.one_hot(target, 10).bool(), -1e9).amax(1, keepdim=True)
            loss = loss + 0.1 * F.relu(0.3 - (true - others)).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            if time.perf_counter() - started > seconds:
                return bake(model)
    return bake(model)


def export(model: nn.Sequential, path: Path) -> None:
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=220.0)
    parser.add_argument("--out", type=Path, default=Path("tests/local/fixtures"))
    parser.add_argument("--kinds", default="relu,groupsort2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    test = load_dataset("fashion-mnist", split="test", limit=2000)
    x = torch.as_tensor(test.images.astype(np.float32) / 255.0)
    y = np.asarray(test.labels)
    for kind in args.kinds.split(","):
        started = time.perf_counter()
        model = train(kind, args.epochs, args.seconds)
        with torch.no_grad():
            accuracy = float(np.mean(model(x).argmax(1).numpy() == y))
        path = args.out / f"fmnist_small_{kind}.onnx"
        export(model, path)
        took = time.perf_counter() - started
        print(f"{kind}: accuracy {accuracy:.3f} on 2000 test images, {took:.0f} s -> {path}")


if __name__ == "__main__":
    main()
