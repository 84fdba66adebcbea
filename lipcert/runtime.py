"""Kept for existing imports: the evaluators live in `lipcert.evaluators`."""

from lipcert.evaluators.exact import Float64Evaluator
from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator

__all__ = ["Float64Evaluator", "OnnxRuntimeEvaluator"]
