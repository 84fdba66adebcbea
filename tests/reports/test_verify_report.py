"""The verify table fits 60, 80 and 120 columns (and a non-tty stdout) without losing a digit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lipcert.cli import app
from lipcert.reports.format import bound_text

runner = CliRunner()
SAMPLE = Path(__file__).resolve().parents[2] / "sample_models" / "fmnist_ce_tau8.onnx"


@pytest.fixture(scope="module")
def reference() -> dict:
    result = runner.invoke(app, ["verify", str(SAMPLE), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _verify(columns: int | None, *extra: str) -> str:
    env = {"COLUMNS": str(columns)} if columns is not None else {"COLUMNS": ""}
    result = runner.invoke(app, ["verify", str(SAMPLE), *extra], env=env)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # the report is on stdout
    return result.stdout


@pytest.mark.parametrize("columns", [60, 80, 120, None], ids=["60", "80", "120", "non-tty"])
def test_every_bound_is_shown_whole_within_the_width(reference: dict, columns: int | None) -> None:
    text = _verify(columns)
    width = columns or 80  # rich's width when stdout is not a terminal
    assert max(len(line) for line in text.splitlines()) <= width
    tokens = set(re.split(r"[\s()\[\]]+|<=|=", text))
    for layer in reference["layers"]:
        if layer["op"] in ("Reshape", "Flatten") and layer["bound"] == 1.0:
            continue  # folded into the pattern beside it (shown with --details)
        assert bound_text(layer["bound"]) in tokens, layer
        assert bound_text(layer["cumulative"]) in tokens, layer
    assert bound_text(reference["lipschitz_bound"]) in tokens
    assert not re.search(r"[\d.]…|…[\d.]", text)  # only layer names may be shortened


def test_a_pattern_is_one_row_and_details_list_its_ops() -> None:
    text = _verify(80)
    group_rows = [line for line in text.splitlines() if " GroupSort " in line]
    assert len(group_rows) == 5  # one per activation, the reshapes around it folded in
    assert not any(" Reshape " in line for line in text.splitlines())
    assert "16x28x28>16x28x28" in group_rows[0]
    detailed = _verify(80, "--details")
    assert "(GroupSort) covers ReduceMin, ReduceMax, Concat" in detailed
    assert sum(" Reshape " in line for line in detailed.splitlines()) == 10


def test_methods_are_footnotes(reference: dict) -> None:
    text = _verify(80)
    for method in {layer["method"] for layer in reference["layers"]}:
        if method != "reshape (same elements)":
            assert re.search(rf"^\[\d+\] {re.escape(method)}$", text, re.MULTILINE), method


def test_a_bound_just_above_one_shows_its_excess() -> None:
    assert bound_text(1.0000000221) == "1.0000001"
    assert bound_text(1.0000000221) != "1.00001"


def test_an_open_input_size_is_not_titled_as_fixed(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    kernel = np.random.default_rng(0).normal(size=(2, 1, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("ReduceMax", ["c"], ["logits"], axes=[2, 3], keepdims=0),
        ],
        "open",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(kernel, "k")],
    )
    path = tmp_path / "open.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    result = runner.invoke(app, ["verify", str(path), "--expect", "100"], env={"COLUMNS": "80"})
    if result.exit_code == 2:
        pytest.skip(f"this model is refused without --input-shape: {result.stderr.strip()}")
    assert result.exit_code == 0, result.output
    title = " ".join(result.stdout.split("layer ")[0].split())
    assert "input size open, probed at" in title
    fixed = runner.invoke(app, ["verify", str(path), "--expect", "100", "--input-shape", "1,8,8"])
    assert "(L2, input 1x8x8)" in " ".join(fixed.stdout.split("layer ")[0].split())
