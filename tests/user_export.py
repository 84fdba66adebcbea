"""torch.onnx.export as users call it, shared by the tests that export torch modules.

Two exporters: TorchScript (`dynamo=False`) with a dynamic batch axis, the graphs most files
in the wild have (Shape/Gather arithmetic, ReduceMin/Max pairs); and torch.export
(`dynamo=True`), whose graphs fix the batch size of `example`. Both at opset 18 unless told.
"""

from __future__ import annotations

import io
import logging
import warnings

import onnx
import torch


def export_like_users(
    module: torch.nn.Module,
    example: torch.Tensor,
    dynamo: bool,
    output_name: str | None = "logits",
    **options: object,
) -> onnx.ModelProto:
    """The ONNX model of `module` run on `example`. TorchScript: input "x" and output
    `output_name` (None: the exporter's name) with a dynamic batch; `options` go to
    torch.onnx.export (opset_version defaults to 18). dynamo: the exporter's names, opset 18."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            logging.disable(logging.WARNING)
            try:
                program = torch.onnx.export(
                    module, (example,), dynamo=True, opset_version=18, verbose=False
                )
            finally:
                logging.disable(logging.NOTSET)
            assert program is not None
            return program.model_proto
        names: dict[str, object] = {"input_names": ["x"], "dynamic_axes": {"x": {0: "batch"}}}
        if output_name is not None:
            names = {
                "input_names": ["x"],
                "output_names": [output_name],
                "dynamic_axes": {"x": {0: "batch"}, output_name: {0: "batch"}},
            }
        options.setdefault("opset_version", 18)
        buffer = io.BytesIO()
        torch.onnx.export(
            module,
            (example,),
            buffer,  # type: ignore[arg-type]  # a file object is accepted
            dynamo=False,
            **names,  # type: ignore[arg-type]
            **options,  # type: ignore[arg-type]
        )
        return onnx.load_from_string(buffer.getvalue())
