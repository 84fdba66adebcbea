"""Plain-PyTorch architectures of lipcert's sample models.

Each factory takes no argument and returns an ``nn.Module`` ready for ``load_state_dict``
and ``eval()``, built from ``torch.nn`` alone, so that lipcert can load the sample
checkpoints with ``--arch lipcert.zoo:<factory>`` without deel-torchlip installed.

The modules are 1-Lipschitz only through their weights: ``sample_models/train.py`` trains
them with deel-torchlip's normalisations attached as parametrizations (spectral and Björck
normalisation, the convolution rescaling of ``SpectralConv2d``, a Frobenius head), then
bakes the normalised weights in. Those weights make each layer close to 1-Lipschitz, not
exactly: power iteration and Björck stop early, and the convolution rescaling is loose. A
freshly built factory, with PyTorch's default initialisation, is not 1-Lipschitz at all.
lipcert never trusts the construction; it measures the bound of the weights it is given.

Inputs are images with pixel values in [0, 1] (uint8 / 255), not standardised.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class GroupSort2(nn.Module):
    """GroupSort with groups of 2 along the channel axis (also called MaxMin).

    Channels ``2k`` and ``2k + 1`` are replaced by their minimum and maximum, in that
    order. This computes exactly as deel-torchlip's ``group_sort(x, 2)``: view to
    ``(N, C/2, 2, ...)``, min and max over the pair axis with ``keepdim``, concatenate,
    view back, so a TorchScript ONNX export gives the same Reshape / ReduceMin /
    ReduceMax / Concat / Reshape pattern as a deel-torchlip model. (deel-torchlip's
    module also multiplies by its ``k_coef_lip`` of 1.0; this one does not.)

    It is a permutation of its input within each pair, hence 1-Lipschitz in the L2 norm,
    though no single op of its export is.

    Shape: input ``(N, C, *)`` with ``C`` even; output of the same shape.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % 2 != 0:
            raise ValueError(f"GroupSort2 needs an even number of channels, got {x.shape[1]!r}")
        pairs = x.view((*x.shape[:1], x.shape[1] // 2, 2, *x.shape[2:]))
        low = torch.min(pairs, 2, keepdim=True)[0]
        high = torch.max(pairs, 2, keepdim=True)[0]
        return torch.cat([low, high], dim=2).view(x.shape)


def _conv_lipnet(
    in_channels: int,
    image_size: int,
    widths: tuple[int, int, int, int],
    hidden: int,
    outputs: int,
) -> nn.Sequential:
    """Four 3x3 convolutions (the 2nd and 4th of stride 2), a hidden linear layer, a head.

    Every convolution pads by 1 with zeros, so the map goes from ``image_size`` to
    ``image_size / 2`` to ``image_size / 4``; each hidden layer is followed by GroupSort2.
    """
    if image_size % 4 != 0:
        raise ValueError(f"image_size must be a multiple of 4, got {image_size!r}")
    w1, w2, w3, w4 = widths
    side = image_size // 4
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(in_channels, w1, 3, padding=1)),
                ("act1", GroupSort2()),
                ("conv2", nn.Conv2d(w1, w2, 3, stride=2, padding=1)),
                ("act2", GroupSort2()),
                ("conv3", nn.Conv2d(w2, w3, 3, padding=1)),
                ("act3", GroupSort2()),
                ("conv4", nn.Conv2d(w3, w4, 3, stride=2, padding=1)),
                ("act4", GroupSort2()),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(w4 * side * side, hidden)),
                ("act5", GroupSort2()),
                ("head", nn.Linear(hidden, outputs)),
            ]
        )
    )


def fashion_mnist_lipnet() -> nn.Sequential:
    """Convolutional LipNet for Fashion-MNIST, 10 classes.

    Input ``(N, 1, 28, 28)``, pixels in [0, 1]; output ``(N, 10)`` logits.
    Layers: conv 3x3 1→16, conv 3x3 stride 2 16→32 (14x14), conv 3x3 32→32,
    conv 3x3 stride 2 32→64 (7x7), flatten (3136), linear 3136→64, linear head 64→10,
    with GroupSort2 after every layer but the head. 233,962 parameters (0.94 MB float32).

    The sample weights (trained with deel-torchlip's normalisations, then baked in) make
    each layer close to 1-Lipschitz; the head has unit-norm rows (each logit 1-Lipschitz,
    not the logit vector). lipcert measures the real bound from the weights.
    """
    return _conv_lipnet(1, 28, (16, 32, 32, 64), hidden=64, outputs=10)


def fashion_mnist_binary_lipnet() -> nn.Sequential:
    """The Fashion-MNIST LipNet body with one output logit, for a two-class task.

    Input ``(N, 1, 28, 28)``, pixels in [0, 1]; output ``(N, 1)``: a positive logit means
    class 1, a negative one class 0. 233,377 parameters (0.93 MB float32).

    The sample weights make each layer close to 1-Lipschitz (the head is one unit-norm
    row); lipcert measures the real bound from the weights.
    """
    return _conv_lipnet(1, 28, (16, 32, 32, 64), hidden=64, outputs=1)


def cifar10_lipnet() -> nn.Sequential:
    """Convolutional LipNet shaped for CIFAR-10, 10 classes.

    Input ``(N, 3, 32, 32)``, pixels in [0, 1]; output ``(N, 10)`` logits.
    Layers: conv 3x3 3→24, conv 3x3 stride 2 24→48 (16x16), conv 3x3 48→48,
    conv 3x3 stride 2 48→64 (8x8), flatten (4096), linear 4096→64, linear head 64→10,
    with GroupSort2 after every layer but the head. 322,442 parameters (1.29 MB float32).

    The sample weights make each layer close to 1-Lipschitz; the head has unit-norm rows.
    lipcert measures the real bound from the weights.
    """
    return _conv_lipnet(3, 32, (24, 48, 48, 64), hidden=64, outputs=10)
