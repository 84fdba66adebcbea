"""Front-ends: model files into the one internal graph.

Each front-end module exposes `load_model(path, options) -> LoadedModel`; `load_model` here
picks the front-end from the file itself, so callers never branch on format.
"""

from __future__ import annotations

from pathlib import Path

from lipcert.errors import ModelLoadError
from lipcert.model import LoadedModel, LoadOptions

_TORCH_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pt2", ".safetensors", ".tar"})


def load_model(path: str | Path, options: LoadOptions | None = None) -> LoadedModel:
    """Load an ONNX file or a PyTorch checkpoint into a LoadedModel."""
    options = options or LoadOptions()
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"no model file at {str(path)!r}")
    if not path.is_file():
        raise ModelLoadError(f"{str(path)!r} is not a regular file")
    if model_format(path) == "onnx":
        from lipcert.frontends import onnx_file

        return onnx_file.load_model(path, options)
    from lipcert.frontends import torch_checkpoint

    return torch_checkpoint.load_model(path, options)


def model_format(path: Path) -> str:
    """'onnx' or 'pytorch', from the suffix, else from the first bytes."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in _TORCH_SUFFIXES:
        return "pytorch"
    with path.open("rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PK") or head[:1] == b"\x80" or (len(head) >= 9 and head[8:9] == b"{"):
        return "pytorch"
    return "onnx"
