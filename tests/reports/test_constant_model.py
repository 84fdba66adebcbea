"""A model whose Lipschitz bound is 0 (a constant function): every radius is infinite.

The report shows numbers (not 300-digit decimals), the JSON writes the infinite ones as null
(`lipcert certify --json` stopped with an internal error on inf), and both stay exit 0.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import lipcert
from lipcert.cli import app
from lipcert.reports.format import json_numbers, lower_text


def constant_model(path: Path) -> Path:
    weight = numpy_helper.from_array(np.zeros((3, 4), np.float32), "W")
    bias = numpy_helper.from_array(np.array([1.0, 0.0, -1.0], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
        "constant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [weight, bias],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_constant_model_report_and_json(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "constant.onnx")
    data = tmp_path / "features.npz"
    labels = np.array([0, 0, 1, 2, 0])  # the constant prediction is class 0
    np.savez(data, x=np.random.default_rng(0).random((5, 4)), y=labels)
    arguments = ["certify", str(model), "--dataset", str(data), "--no-config"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # overflow to inf is expected
        report = CliRunner().invoke(app, arguments)
    assert report.exit_code == 0, report.output
    assert not re.search(r"\d{20}", report.stdout)  # no 309-digit radius
    result = CliRunner().invoke(app, [*arguments, "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["mcr"] is None and payload["mean_radius"] is None
    assert payload["per_class"][0]["mcr"] is None  # class 0: correct, infinite radii
    assert payload["certified_accuracy"][0]["value"] == 0.6
    api_report = lipcert.certify_dataset(lipcert.load(model), (np.random.rand(5, 4), labels))
    assert json.loads(api_report.to_json())["mcr"] is None


def test_json_numbers_and_large_measures() -> None:
    assert json_numbers({"a": [1.0, math.inf, (-math.inf, 2)], "b": math.nan}) == {
        "a": [1.0, None, [None, 2]],
        "b": None,
    }
    assert lower_text(1.7976931348623157e308, 3) == "1.79769e+308"
    assert lower_text(-1.7976931348623157e308, 3) == "-1.79770e+308"  # down: toward -inf
    assert lower_text(123456789.5, 3) == "123456789.500"
    assert lower_text(1234567891.5, 3) == "1.23456e+09"
