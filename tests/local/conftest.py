"""Tests of the local certificate share the 2-D networks and ground truth of tests/soundness."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

_SOUNDNESS = str(Path(__file__).resolve().parents[1] / "soundness")
if _SOUNDNESS not in sys.path:
    sys.path.insert(0, _SOUNDNESS)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
