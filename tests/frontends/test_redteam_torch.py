"""Red team of the PyTorch front-end: modules whose eval-mode function lipcert must not misread.

Ground truth is the module itself, in float64 eval mode: a point within a certified radius
where its decision changes, or a refusal where the export cannot stand for the module.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import lipcert
from lipcert.errors import ModelLoadError

SHAPE = (1, 4, 4)


def _pixels(n: int, seed: int) -> np.ndarray:
    """Images as certify feeds them: multiples of 1/255 in [0, 1], some pixels 0, some 1."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *SHAPE)) / 255.0
    x[rng.random(x.shape) < 0.2] = 0.0
    x[rng.random(x.shape) < 0.1] = 1.0
    return x.astype(np.float32)


class RawPixelBranch(nn.Module):
    """Standardises its input when the batch looks like raw pixels (all >= 0, some > 0.5).

    A trace at the zero input keeps the other branch; so does a probe batch that mixes
    positive and negative inputs. On images (what certify feeds) the module computes
    fc((x - 0.5) / 0.05): 20 times the Lipschitz constant of the traced fc(x).
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.min() >= 0 and x.max() > 0.5:
            x = (x - 0.5) / 0.05
        return self.fc(x)


def _decision_change_within(module: nn.Module, x: np.ndarray, radius: float) -> bool:
    """Whether the module (float64, eval, one sample a batch) changes decision within radius.

    The module is affine on the images (one branch), so the nearest point of another decision
    along each class pair's margin gradient is found by one step; it must stay an image.
    """
    reference = module.double().eval()
    x0 = torch.tensor(x, dtype=torch.float64)[None]
    with torch.no_grad():
        logits = reference(x0)[0]
    predicted = int(logits.argmax())
    for other in range(logits.numel()):
        if other == predicted:
            continue
        point = x0.clone().requires_grad_(True)
        out = reference(point)[0]
        margin = out[predicted] - out[other]
        (gradient,) = torch.autograd.grad(margin, point)
        step = -(float(margin.detach()) / float(gradient.norm()) ** 2) * 1.001 * gradient
        candidate = (x0 + step).clamp(0.0, 1.0)
        distance = float((candidate - x0).norm())
        with torch.no_grad():
            moved = int(reference(candidate)[0].argmax())
        if moved != predicted and distance < radius:
            return True
    return False


def test_branch_on_raw_pixels_is_not_certified() -> None:
    """The probe batches must include images: the module's function on them is not the trace's.

    Before the fix lipcert bounded fc alone (the zero-input trace) and certified images with
    radii 20 times too large: the module changes decision well within them."""
    module = RawPixelBranch().eval()
    x = _pixels(64, seed=1)
    try:
        model = lipcert.from_torch(module, SHAPE)
    except ModelLoadError as exc:
        assert "disagrees with the module" in str(exc)
        return
    result = model.certify(x, np.zeros(len(x), dtype=np.int64))
    broken = [
        i
        for i in range(len(x))
        if result.radius[i] > 0
        and _decision_change_within(RawPixelBranch(), x[i], result.radius[i])
    ]
    assert not broken, f"{len(broken)} samples certified beyond the module's decision boundary"


class AlwaysStandardised(nn.Module):
    """The look-alike without the branch: it must load, with the bound of 4 W (0.25 is exact
    in float32, as the export's constant is)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x.flatten(1) - 0.5) / 0.25)


def test_standardising_without_a_branch_loads() -> None:
    module = AlwaysStandardised().eval()
    model = lipcert.from_torch(module, SHAPE)
    weight = module.fc.weight.detach().double().numpy() * 4.0
    exact = float(np.linalg.svd(weight, compute_uv=False)[0])
    assert exact <= model.lipschitz_bound <= exact * (1 + 1e-6)
    x = _pixels(64, seed=1)
    result = model.certify(x, np.zeros(len(x), dtype=np.int64))
    assert (result.radius > 0).any()
    for i in np.flatnonzero(result.radius > 0):
        assert not _decision_change_within(AlwaysStandardised(), x[i], float(result.radius[i]))
