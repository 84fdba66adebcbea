"""Red team: a Fourier block (rfft, per-frequency matrices, irfft) exported with a fixed batch
of 2 whose spectrum is scaled by a constant of the batch's shape (position 0 by `scales[0]`,
position 1 by `scales[1]`): the function differs between batch positions.

The per-frequency probe put different columns at different batch positions, so it read a
matrix mixing the two positions' operators: bound 3.56 against 3.98 at position 1 (break).
Ground truth: onnxruntime's dense matrix at each batch position (unit vectors placed at
that position), its largest singular value; the bound must reach the larger one. With equal
scales the bound stays the exact per-frequency norm.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from user_export import export_like_users

from lipcert.bounds.compose import analyse
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

N, C, BATCH = 6, 2, 2


class PerPositionSpectrum(nn.Module):
    """y = irfft(Q(f) (scale[b] rfft(x))) with a batch pinned to 2."""

    re: torch.Tensor
    im: torch.Tensor
    scale: torch.Tensor

    def __init__(self, scales: tuple[float, float], seed: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        shape = (N // 2 + 1, C, C)
        symbol = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
        self.register_buffer("re", torch.as_tensor(symbol.real, dtype=torch.float32))
        self.register_buffer("im", torch.as_tensor(symbol.imag, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scales).reshape(BATCH, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.complex(self.re, self.im)
        spectrum = torch.fft.rfft(x) * self.scale  # (B, C, N // 2 + 1)
        mixed = (q @ spectrum.permute(2, 1, 0)).permute(2, 1, 0)
        return torch.fft.irfft(mixed, n=N)


def exported(scales: tuple[float, float]) -> onnx.ModelProto:
    module = PerPositionSpectrum(scales, seed=5).eval()
    example = torch.rand(BATCH, C, N, generator=torch.Generator().manual_seed(0))
    return export_like_users(module, example, dynamo=True)


def norm_at(session: ort.InferenceSession, position: int) -> float:
    name = session.get_inputs()[0].name
    columns = []
    for i in range(C * N):
        probe = np.zeros((BATCH, C * N), np.float32)
        probe[position, i] = 1.0
        out = session.run(None, {name: probe.reshape(BATCH, C, N)})[0][position]
        columns.append(out.reshape(-1))
    return float(np.linalg.svd(np.array(columns, np.float64).T, compute_uv=False)[0])


@pytest.mark.parametrize("scales", [(1.0, 3.0), (3.0, 1.0), (1.0, 1.0)])
def test_bound_covers_every_batch_position(scales: tuple[float, float]) -> None:
    proto = exported(scales)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    truths = [norm_at(session, p) for p in range(BATCH)]
    analysis = analyse(load_from_proto(proto, LoadOptions(), source="t", fmt="onnx").graph)
    (block,) = [layer for layer in analysis.layers if layer.op == "AffineBlock"]
    assert "per-frequency" in block.method
    bound = float(np.prod([layer.bound for layer in analysis.layers]))
    assert bound >= max(truths) * (1 - 1e-5), (bound, truths)
    if scales[0] == scales[1]:
        assert bound <= max(truths) * (1 + 1e-5), (bound, truths)  # still exact
