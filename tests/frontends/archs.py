"""Module factories for --arch in the PyTorch front-end tests (`--arch archs:small_net`).

Every factory takes no argument and seeds torch, so that two calls build the same weights.
Inputs are 1x6x6 unless a factory says otherwise.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

INPUT_SHAPE = (1, 6, 6)
NUM_CLASSES = 3


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, NUM_CLASSES),
    )


def softmax_net() -> nn.Module:
    """small_net followed by a Softmax: certificates must use the logits before it."""
    return nn.Sequential(small_net(), nn.Softmax(dim=1))


class SignBranch(nn.Module):
    """Data-dependent Python control flow: a trace at the zero input keeps only one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def sign_branch() -> nn.Module:
    """Inputs of shape (4,)."""
    torch.manual_seed(0)
    return SignBranch()


def torchlip_net() -> nn.Module:
    """A deel-torchlip model with its normalisations as parametrizations."""
    from deel import torchlip

    torch.manual_seed(0)
    return torchlip.Sequential(
        torchlip.SpectralConv2d(1, 4, 3, padding=1),
        torchlip.GroupSort2(),
        nn.Flatten(),
        torchlip.FrobeniusLinear(4 * 6 * 6, NUM_CLASSES),
    )


def raising() -> nn.Module:
    raise RuntimeError("no such architecture in this release")


def not_a_module() -> object:
    return {"conv": "not a module"}


def wider_net() -> nn.Module:
    """small_net's keys with other shapes: small_net's weights do not fit it."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, NUM_CLASSES),
    )


def named_net() -> nn.Module:
    """small_net's shapes under other keys (conv.weight, fc.weight, ...)."""
    layers = small_net()
    return nn.Sequential(
        OrderedDict(
            [("conv", layers[0]), ("act", layers[1]), ("flat", layers[2]), ("fc", layers[3])]
        )
    )
