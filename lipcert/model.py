"""What a front-end hands to the rest of lipcert: the graph to bound and a model to run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lipcert.errors import UsageError
from lipcert.graph import Graph

# A per-sample tensor larger than this is refused as absurd (2^28 float32 values = 1 GiB).
MAX_SAMPLE_ELEMENTS = 1 << 28
MAX_DIMENSION = 1 << 16


@dataclass(frozen=True)
class LoadOptions:
    """How to read a model file; every front-end takes the same options."""

    input_shape: tuple[int, ...] | None = None
    arch: str | None = None
    trust_model: bool = False


@dataclass
class LoadedModel:
    """A model ready for bounds and inference.

    `graph` is what every bound is computed on. `onnx_bytes` is the same function as an ONNX
    model whose first output is the graph's logits (a Softmax at the output removed), which the
    runtime executes; for a PyTorch checkpoint it is the module's export, checked against the
    module itself. `torch_module` is kept for checkpoints so callers can cross-check.
    """

    graph: Graph
    onnx_bytes: bytes
    input_name: str
    output_name: str
    format: str
    path: str
    torch_module: Any = None
    metadata: dict[str, str] = field(default_factory=dict)
    # The batch size the model insists on, when it fixes one (inputs are then padded to it).
    fixed_batch: int | None = None


def metadata_input_shape(text: str) -> tuple[int, ...] | None:
    """The per-sample shape a checkpoint's `input_shape` metadata records: "3,32,32" as
    lipcert writes it ("3x32x32" read too). None when empty; UsageError when unusable. (The
    command line parses --input-shape itself: library functions take tuples of ints.)"""
    if text.strip() == "":
        return None
    try:
        dims = tuple(int(p.strip()) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"expected an input_shape like 3,32,32 but got {text!r}") from None
    check_sample_shape(dims, what="input_shape")
    return dims


def check_sample_shape(dims: tuple[int, ...], *, what: str) -> None:
    """Refuse empty, non-positive or absurdly large per-sample shapes."""
    if not 1 <= len(dims) <= 4:
        raise UsageError(f"expected {what} with 1 to 4 dimensions but got {dims!r}")
    if any(d <= 0 for d in dims):
        raise UsageError(f"expected positive dimensions in {what} but got {dims!r}")
    if any(d > MAX_DIMENSION for d in dims):
        raise UsageError(f"expected dimensions up to {MAX_DIMENSION} in {what} but got {dims!r}")
    total = 1
    for d in dims:
        total *= d
    if total > MAX_SAMPLE_ELEMENTS:
        raise UsageError(
            f"expected at most {MAX_SAMPLE_ELEMENTS} values per sample in {what} but got {total}"
        )
