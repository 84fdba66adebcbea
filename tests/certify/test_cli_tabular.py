"""Vector inputs end to end: a 2-D classifier certified from .npz and .csv features.

Ground truth is a dense grid: every grid point the model labels differently from a test
point x is a witness that the true distance from x to the decision boundary is at most its
distance to x, so a certified radius above it is unsound. The grid is fine enough (spacing
0.01) that a sound certificate of a 1-Lipschitz network is never close to failing by accident.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from lipcert.cli import app
from lipcert.zoo import GroupSort2

runner = CliRunner()
GRID = np.linspace(-4.0, 4.0, 801)  # spacing 0.01


def _mlp(num_logits: int, seed: int, scale: float = 1.0) -> nn.Module:
    """2 -> 16 -> 16 -> num_logits with GroupSort2, every weight orthogonal (1-Lipschitz),
    times `scale` (a network that is far from 1-Lipschitz when scale != 1).

    The head's bias is centred on a sample of the plane, so that every class has a region
    there and the decision boundary crosses the test points' square.
    """
    torch.manual_seed(seed)
    head = nn.Linear(16, num_logits)
    layers = [nn.Linear(2, 16), GroupSort2(), nn.Linear(16, 16), GroupSort2(), head]
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight)
            layer.weight.data *= scale
            nn.init.normal_(layer.bias, std=0.5)
    module = nn.Sequential(*layers).eval()
    with torch.no_grad():
        sample = torch.rand(2000, 2, generator=torch.Generator().manual_seed(seed)) * 6 - 3
        head.bias -= module(sample).median(dim=0).values
    return module


def _export(module: nn.Module, path: Path) -> Path:
    torch.onnx.export(
        module,
        (torch.zeros(1, 2),),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def _predict(model: Path, points: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"x": points.astype(np.float32)})[0]
    return (logits[:, 0] > 0).astype(int) if logits.shape[1] == 1 else np.argmax(logits, axis=1)


def _grid_distance(model: Path, points: np.ndarray, mean: float = 0.0, std: float = 1.0):
    """For each point, the distance to the nearest grid point of another predicted class."""
    xs, ys = np.meshgrid(GRID, GRID, indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
    grid_class = _predict(model, (grid - mean) / std)
    point_class = _predict(model, (points - mean) / std)
    distances = np.empty(len(points))
    for i, (point, label) in enumerate(zip(points, point_class, strict=True)):
        other = grid[grid_class != label]
        distances[i] = np.min(np.linalg.norm(other - point, axis=1)) if len(other) else np.inf
    return distances, point_class


def _certify(*args: object) -> object:
    return runner.invoke(app, ["certify", *map(str, args), "--no-config"])


@pytest.mark.parametrize(
    ("num_logits", "margins", "scale"),
    [
        (3, "float32", 1.0),
        (3, "float64", 1.0),
        (1, "float64", 1.0),
        (4, "float32", 1.0),
        (3, "float32", 1.7),
        (1, "float32", 0.5),
    ],
    ids=["3class-float32", "3class-float64", "binary", "4class", "3class-x1.7", "binary-x0.5"],
)
def test_radii_never_exceed_the_grid_distance(
    tmp_path: Path, num_logits: int, margins: str, scale: float
) -> None:
    model = _export(_mlp(num_logits, seed=num_logits, scale=scale), tmp_path / "mlp.onnx")
    rng = np.random.default_rng(num_logits)
    points = rng.uniform(-3.0, 3.0, size=(60, 2))
    truth, predicted = _grid_distance(model, points)
    labels = predicted.copy()
    labels[:5] = (labels[:5] + 1) % max(num_logits, 2)  # some wrong predictions
    data = tmp_path / "points.npz"
    np.savez(data, x=points, y=labels)
    out = tmp_path / "radii.csv"
    result = _certify(model, "--dataset", data, "--csv", out, "--json", "--margins", margins)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"]["kind"] == "features"
    assert "units of the features" in report["input_space"]
    rows = list(csv.DictReader(out.open()))
    radius = np.array([float(r["radius"]) for r in rows])
    assert np.array_equal([int(r["prediction"]) for r in rows], predicted)
    assert np.all(radius <= truth), np.max(radius - truth)
    # not vacuous: most points get a certificate, and the grid finds a boundary near them
    assert np.mean(radius > 0) > 0.9
    assert np.median(radius / truth) > 0.1
    # the wrong predictions are never "certified" rows
    assert {rows[i]["status"] for i in range(5)} <= {"misclassified", "tie", "within_allowance"}


def test_csv_features_with_per_feature_normalisation(tmp_path: Path) -> None:
    model = _export(_mlp(3, seed=7), tmp_path / "mlp.onnx")
    rng = np.random.default_rng(7)
    mean, std = np.array([1.0, -2.0]), np.array([2.0, 0.5])
    # raw features far from [0, 1]; the model sees (x - mean) / std
    points = mean + std * rng.uniform(-1.5, 1.5, size=(40, 2))
    session_points = (points - mean) / std
    predicted = _predict(model, session_points)
    table = tmp_path / "points.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["width", "target", "height"])
        for (a, b), label in zip(points, predicted, strict=True):
            writer.writerow([repr(float(a)), int(label), repr(float(b))])
    out = tmp_path / "radii.csv"
    result = _certify(
        model,
        "--dataset",
        table,
        "--label-column",
        "target",
        "--mean",
        "1,-2",
        "--std",
        "2,0.5",
        "--csv",
        out,
        "--json",
        "--margins",
        "float64",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] == 1.0
    radius = np.array([float(r["radius"]) for r in csv.DictReader(out.open())])
    # the grid is in raw units: points are mapped to model inputs by the same normalisation
    xs, ys = np.meshgrid(
        np.linspace(mean[0] - 4 * std[0], mean[0] + 4 * std[0], 601),
        np.linspace(mean[1] - 4 * std[1], mean[1] + 4 * std[1], 601),
        indexing="ij",
    )
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
    grid_class = _predict(model, (grid - mean) / std)
    for point, label, r in zip(points, predicted, radius, strict=True):
        other = grid[grid_class != label]
        assert r <= np.min(np.linalg.norm(other - point, axis=1))
    assert np.mean(radius > 0) > 0.9


def test_csv_errors_name_the_line_and_column(tmp_path: Path) -> None:
    model = _export(_mlp(3, seed=1), tmp_path / "mlp.onnx")
    table = tmp_path / "bad.csv"
    table.write_text("a,b,label\n0.1,0.2,1\n0.3,abc,0\n")
    result = _certify(model, "--dataset", table, "--quiet")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"DatasetError: {table}: line 3, column 'b': expected a finite number but found 'abc'"
    )
    missing = _certify(model, "--dataset", table, "--label-column", "y", "--quiet")
    assert missing.exit_code == 2
    assert "expected a label column 'y'" in missing.stderr
    npz = tmp_path / "p.npz"
    np.savez(npz, x=np.zeros((2, 2)), y=np.zeros(2, dtype=int))
    wrong = _certify(model, "--dataset", npz, "--label-column", "y", "--quiet")
    assert wrong.exit_code == 2 and "label_column (--label-column) is for CSV files" in wrong.stderr


def test_features_that_do_not_fit_the_model(tmp_path: Path) -> None:
    model = _export(_mlp(3, seed=1), tmp_path / "mlp.onnx")
    data = tmp_path / "p.npz"
    np.savez(data, x=np.zeros((2, 3)), y=np.zeros(2, dtype=int))
    result = _certify(model, "--dataset", data, "--quiet")
    assert result.exit_code == 2
    assert result.stderr.startswith("DatasetError: the features of 'p.npz' do not fit the model")


def test_matmul_first_model_on_csv_features_matches_the_exact_distance(tmp_path: Path) -> None:
    import onnx
    from linear_models import distance_to_boundary
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    weight = rng.normal(size=(5, 3)).astype(np.float32)  # x @ W: 5 features, 3 classes
    bias = rng.normal(size=3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["logits"]),
        ],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = tmp_path / "matmul.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    features = rng.normal(scale=20.0, size=(30, 5))  # far outside [0, 1]
    labels = np.argmax(features @ weight.astype(np.float64) + bias, axis=1)
    table = tmp_path / "t.csv"
    lines = ["f0,f1,f2,f3,f4,label"]
    for row, y in zip(features, labels, strict=True):
        lines.append(",".join([*map(repr, map(float, row)), str(int(y))]))
    table.write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.csv"
    result = _certify(model, "--dataset", table, "--csv", out, "--quiet", "--margins", "float64")
    assert result.exit_code == 0, result.output
    radius = np.array([float(r["radius"]) for r in csv.DictReader(out.open())])
    exact = distance_to_boundary(weight.T, bias, features)
    assert np.all(radius <= exact)
    np.testing.assert_allclose(radius, exact, rtol=1e-6)
