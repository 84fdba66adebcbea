"""Valid models that crashed lipcert: each gives a correct result or a one-line refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from lipcert.bounds.compose import analyse
from lipcert.cli import app
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

runner = CliRunner()


def _save(path: Path, nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray], opset: int,
          outputs: int) -> Path:  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outputs])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=4 if opset < 10 else 8
    )
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _csv(path: Path, samples: int = 12) -> Path:
    rng = np.random.default_rng(0)
    rows = ["a,b,c,d,label"]
    for features in rng.uniform(0, 1, (samples, 4)):
        rows.append(",".join(f"{v:.4f}" for v in features) + f",{int(rng.integers(0, 3))}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def slice9(tmp_path: Path) -> Path:
    """Opset 9: Slice takes starts, ends and axes as attributes."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Slice", ["x"], ["s"], name="slice9", starts=[0], ends=[3], axes=[1]),
        helper.make_node("Gemm", ["s", "w", "b"], ["y"], name="head"),
    ]
    weights = {"w": (rng.normal(size=(3, 3)) / 3).astype(np.float32), "b": np.zeros(3, np.float32)}
    return _save(tmp_path / "slice9.onnx", nodes, weights, 9, 3)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["verify", "{model}", "--empirical"], id="verify_empirical"),
        pytest.param(
            ["certify", "{model}", "--dataset", "{data}", "--label-column", "label", "--margins",
             "float64", "--quiet"],
            id="certify_float64",
        ),
        pytest.param(["attack", "{model}", "--dataset", "{data}", "--limit", "3"], id="attack"),
    ],
)  # fmt: skip
def test_opset_9_slice_runs_in_every_path_that_executes_the_graph(
    slice9: Path, tmp_path: Path, command: list[str]
) -> None:
    data = _csv(tmp_path / "data.csv")
    args = [a.format(model=slice9, data=data) for a in command]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def test_head_followed_by_a_broadcasting_mul_is_bounded(tmp_path: Path) -> None:
    """One logit spread to three by a Mul: no per-logit head, the global bound, sound."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 1)).astype(np.float32)
    c = np.array([[1.0, -2.0, 0.5]], np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["h"], name="head"),
        helper.make_node("Mul", ["h", "c"], ["y"], name="spread"),
    ]
    path = _save(tmp_path / "spread.onnx", nodes, {"w": w, "c": c}, 17, 3)
    spec = analyse(
        load_from_proto(onnx.load(path), LoadOptions(), source="t", fmt="onnx").graph
    ).spec
    exact = float(np.linalg.norm(c.astype(np.float64)) * np.linalg.norm(w.astype(np.float64)))
    assert spec.lipschitz_bound >= exact * (1 - 1e-12)
    assert spec.lipschitz_bound <= exact * (1 + 1e-9)
    for i in range(3):
        for j in range(3):
            if i != j:
                pair = abs(float(c[0, i] - c[0, j])) * float(np.linalg.norm(w))
                assert spec.pair_bound(i, j) >= pair * (1 - 1e-12)
    result = runner.invoke(
        app, ["certify", str(path), "--dataset", str(_csv(tmp_path / "d.csv")),
              "--label-column", "label", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_model_with_zero_logits_is_refused_in_one_line(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="nothing")]
    path = _save(tmp_path / "zero.onnx", nodes, {"w": np.zeros((4, 0), np.float32)}, 17, 0)
    result = runner.invoke(app, ["verify", str(path)])
    assert result.exit_code == 2, result.output
    assert "has no logits" in result.output
    assert "internal error" not in result.output


ARCH = """
import torch
print("importing the architecture")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        print("forward")
        return self.linear(x)


def make():
    print("building the module")
    return Net()
"""


def test_a_factory_that_prints_leaves_json_stdout_alone(tmp_path: Path) -> None:
    import torch

    (tmp_path / "arch.py").write_text(ARCH)
    torch.manual_seed(0)
    state = torch.nn.Linear(4, 3).state_dict()
    torch.save({f"linear.{k}": v for k, v in state.items()}, tmp_path / "net.pt")
    completed = subprocess.run(
        [sys.executable, "-m", "lipcert", "verify", str(tmp_path / "net.pt"), "--arch",
         f"{tmp_path / 'arch.py'}:make", "--input-shape", "4", "--json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert completed.returncode in (0, 1), completed.stderr
    document = json.loads(completed.stdout)
    assert document
    assert "building the module" in completed.stderr
    assert "forward" in completed.stderr
