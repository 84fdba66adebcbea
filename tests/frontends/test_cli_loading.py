"""`lipcert verify` on good, unsupported and hostile models: exit codes, JSON, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import archs
import numpy as np
import pytest
import torch
from onnx import helper
from onnx_models import conv_net, save
from refusals import assert_one_line_error, load, verify

from lipcert.bounds.compose import analyse
from lipcert.errors import ModelLoadError, UnsafeModelError, UnsupportedOpError, UsageError
from lipcert.model import LoadOptions

NONE = LoadOptions()


@pytest.fixture
def good_model(tmp_path: Path) -> Path:
    return save(conv_net(("N", 1, 8, 8)), tmp_path / "net.onnx")


@pytest.fixture
def bound(good_model: Path) -> float:
    return analyse(load(good_model).graph).spec.lipschitz_bound


def _json(stdout: str) -> dict:
    return json.loads(stdout)


@pytest.mark.parametrize(
    ("factor", "exit_code"),
    [pytest.param(2.0, 0, id="bound_below_expect"), pytest.param(0.5, 1, id="bound_above_expect")],
)
def test_verify_json(good_model: Path, bound: float, factor: float, exit_code: int) -> None:
    assert bound > 1.0  # conv_net's random weights are far from 1-Lipschitz
    result = verify(good_model, NONE, "--json", "--expect", repr(bound * factor))
    assert result.exit_code == exit_code, result.stderr
    payload = _json(result.stdout)
    assert {
        "lipschitz_bound",
        "logit_bounds",
        "pairwise_bounds",
        "layers",
        "expected",
        "passed",
    } <= set(payload)
    assert payload["lipschitz_bound"] == bound
    assert payload["expected"] == bound * factor
    assert payload["passed"] is (exit_code == 0)
    assert len(payload["logit_bounds"]) == 3
    assert all(b <= payload["lipschitz_bound"] for b in payload["logit_bounds"])
    assert np.asarray(payload["pairwise_bounds"]).shape == (3, 3)
    assert [layer["op"] for layer in payload["layers"]] == [
        "Conv",
        "Relu",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
    ]
    for layer in payload["layers"]:
        assert {"name", "op", "bound", "method", "exact"} <= set(layer)
        assert isinstance(layer["exact"], bool)
        assert layer["bound"] >= 0


def test_verify_report_goes_to_stdout(good_model: Path, bound: float) -> None:
    result = verify(good_model, NONE, "--expect", repr(2 * bound))
    assert result.exit_code == 0
    assert result.stderr == ""
    assert "PASSED" in result.stdout
    failed = verify(good_model, NONE, "--expect", repr(bound / 2))
    assert failed.exit_code == 1
    assert "FAILED" in failed.stdout


def test_unsupported_op_lists_the_supported_ones(tmp_path: Path) -> None:
    model = conv_net()
    model.graph.node.insert(2, helper.make_node("Exp", ["r"], ["e"], name="exp"))
    model.graph.node[3].input[0] = "e"
    result = verify(save(model, tmp_path / "exp.onnx"), NONE)
    assert_one_line_error(
        result,
        UnsupportedOpError,
        r"node 'exp' has op 'Exp', which has no sound Lipschitz rule; "
        r"supported ops: .*\bConv\b.*\bGemm\b.*\bRelu\b",
    )


def test_hostile_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "half.onnx"
    valid = conv_net().SerializeToString()
    path.write_bytes(valid[: len(valid) // 2])
    assert_one_line_error(
        verify(path, NONE), ModelLoadError, r"'.*half\.onnx' is not a readable ONNX model"
    )


def test_pickled_module_needs_trust(tmp_path: Path) -> None:
    path = tmp_path / "net.pt"
    torch.save(archs.small_net(), path)
    assert_one_line_error(
        verify(path, LoadOptions(input_shape=archs.INPUT_SHAPE)),
        UnsafeModelError,
        r"'.*net\.pt' holds pickled Python objects .*can run code when loaded; "
        r"pass trust=True \(--trust-model\)",
    )


def test_traceback_on_request(tmp_path: Path) -> None:
    path = tmp_path / "half.onnx"
    path.write_bytes(conv_net().SerializeToString()[:40])
    result = verify(path, NONE, "--traceback")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "Traceback (most recent call last)" in result.stderr
    assert "lipcert/frontends/onnx_file.py" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("ModelLoadError: ")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        pytest.param(
            ["--input-shape", "1,x,8"],
            r"expected --input-shape like 3,32,32 but got '1,x,8'",
            id="input_shape",
        ),
        pytest.param(
            ["--input-shape", "0,8,8"],
            r"expected positive dimensions in --input-shape",
            id="zero_dim",
        ),
        pytest.param(
            ["--expect", "0"],
            r"expected a finite --expect > 0 and --tol >= 0 but got 0\.0",
            id="expect",
        ),
    ],
)
def test_bad_options(good_model: Path, args: list[str], match: str) -> None:
    assert_one_line_error(verify(good_model, NONE, *args), UsageError, match)


def test_model_file_that_is_not_there(tmp_path: Path) -> None:
    assert_one_line_error(
        verify(tmp_path / "absent.onnx", NONE), ModelLoadError, r"no model file at '.*absent\.onnx'"
    )
