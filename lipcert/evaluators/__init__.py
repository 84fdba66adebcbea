"""Evaluators: logits of batches with a guaranteed bound of their rounding error.

One protocol (`Evaluator`: `evaluate(batch) -> Evaluation(logits, allowance)`), one
agreement check (`check_agreement`). See `lipcert.evaluators.base` for how to add one.
"""

from lipcert.evaluators.base import (
    Evaluation,
    Evaluator,
    HeadError,
    agree,
    check_agreement,
    input_norms,
)

__all__ = ["Evaluation", "Evaluator", "HeadError", "agree", "check_agreement", "input_norms"]
