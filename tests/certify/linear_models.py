"""Hand-built models whose certified radii are known in closed form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def linear_onnx(
    path: Path, weight: np.ndarray, bias: np.ndarray, input_shape: tuple[int, ...]
) -> Path:
    """f(x) = W flatten(x) + b as an ONNX file with a dynamic batch axis."""
    weight = np.asarray(weight, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", weight.shape[0]])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path


def distance_to_boundary(weight: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Exact L2 distance from each flattened x to the decision boundary of argmax(Wx + b).

    For a linear classifier the region of class p is an intersection of half-spaces
    (w_p - w_j).x + (b_p - b_j) >= 0, so the distance to its boundary is the smallest
    distance to one of those hyperplanes. One logit: |w.x + b| / ||w||.
    """
    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64)
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    logits = flat @ w.T + b
    if w.shape[0] == 1:
        return np.abs(logits[:, 0]) / np.linalg.norm(w[0])
    distances = []
    for row in logits:
        p = int(np.argmax(row))
        gaps = [(row[p] - row[j]) / np.linalg.norm(w[p] - w[j]) for j in range(len(row)) if j != p]
        distances.append(min(gaps))
    return np.array(distances)
