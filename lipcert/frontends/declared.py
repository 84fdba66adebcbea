"""The per-sample input shape a model file fixes, read without loading the model.

Readers that choose a size for the model (an image folder's resize and crop) need it before
the model is loaded: loading and bounding an ImageNet-sized model takes far longer than
reading its declared input. Only what the file states is used; None when it fixes no size.
"""

from __future__ import annotations

from pathlib import Path

from lipcert.model import metadata_input_shape


def declared_input_shape(
    path: str | Path, input_shape: tuple[int, ...] | None = None
) -> tuple[int, ...] | None:
    """`input_shape` when given (the user's choice, already parsed), else the per-sample
    shape the model file fixes: an ONNX file's declared input (every dimension after the
    batch fixed), a safetensors file's `input_shape` metadata. None for other checkpoints or
    an open size."""
    if input_shape is not None:
        return tuple(input_shape)
    path = Path(path)
    from lipcert.frontends import model_format

    if model_format(path) == "onnx":
        return _onnx_shape(path)
    from lipcert.frontends.torch_checkpoint import checkpoint_kind

    if checkpoint_kind(path) == "safetensors":
        return _safetensors_shape(path)
    return None


def _onnx_shape(path: Path) -> tuple[int, ...] | None:
    from lipcert.frontends.onnx_file import _declared_dims, _read_protobuf, _single_data_input

    model = _read_protobuf(path)
    sample = _declared_dims(_single_data_input(model, str(path)))[1:]
    if not sample or any(d is None or d < 1 for d in sample):
        return None
    return tuple(int(d) for d in sample if d is not None)


def _safetensors_shape(path: Path) -> tuple[int, ...] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            text = (handle.metadata() or {}).get("input_shape")
        return None if text is None else metadata_input_shape(text)
    except Exception:  # safetensors' own errors, a bad shape: the loader reports them
        return None
