"""certify_dataset, its report, and the CertifiedAccuracy accumulator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from api_models import NPZ, TAU8, fashion, points_2d, relu_2d
from typer.testing import CliRunner

import lipcert
from lipcert.errors import UsageError

EPS = [36 / 255, 72 / 255, 0.5]


@pytest.fixture(scope="module")
def tau8() -> lipcert.Model:
    return lipcert.load(TAU8)


@pytest.fixture(scope="module")
def report(tau8: lipcert.Model) -> lipcert.DatasetReport:
    return lipcert.certify_dataset(tau8, fashion(300), eps=EPS)


def test_metrics_are_those_of_the_per_sample_table(report: lipcert.DatasetReport) -> None:
    frame = report.to_pandas()
    _, y = fashion(300)
    assert frame["label"].tolist() == y.tolist()
    correct = frame["prediction"].to_numpy() == y
    radius = frame["radius"].to_numpy()
    assert report.n == 300
    assert report.accuracy == pytest.approx(correct.mean(), abs=0)
    for eps in EPS:
        assert report.certified_accuracy[eps] == np.mean(correct & (radius > eps))
    assert report.mcr == pytest.approx(np.mean(np.where(correct, radius, -radius)), rel=1e-12)
    classes = report.per_class()
    assert classes["n"].sum() == 300
    for _, row in classes.iterrows():
        mask = y == row["label"]
        assert row["accuracy"] == pytest.approx(correct[mask].mean(), abs=1e-15)


def test_every_kind_of_data_gives_the_same_certificates(
    tau8: lipcert.Model, report: lipcert.DatasetReport
) -> None:
    x, y = fashion(300)
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 300, 64)]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=50
    )
    from lipcert.datasets import load_dataset

    for data in (batches, loader, load_dataset(str(NPZ), limit=300)):
        other = lipcert.certify_dataset(tau8, data, eps=EPS)
        assert np.array_equal(other.samples.prediction, report.samples.prediction)
        # Samples recomputed in float64 may differ in their last bits with the batch's
        # composition (BLAS kernels); the others are bit-identical.
        assert np.allclose(other.samples.radius, report.samples.radius, rtol=1e-12, atol=0)


def test_the_same_numbers_as_the_command_line(tau8: lipcert.Model, tmp_path: Path) -> None:
    from lipcert.cli import app

    csv = tmp_path / "cli.csv"
    result = CliRunner().invoke(
        app,
        [
            *("certify", str(TAU8), "--dataset", str(NPZ), "--limit", "200"),
            *("--eps", "36/255,0.5", "--csv", str(csv), "--quiet"),
        ],
    )
    assert result.exit_code == 0, result.output
    from lipcert.datasets import load_dataset

    data = load_dataset(str(NPZ), limit=200)
    ours = lipcert.certify_dataset(tau8, data, eps=[36 / 255, 0.5]).to_pandas()
    theirs = pd.read_csv(csv)
    assert list(theirs.columns) == list(ours.columns)
    for column in ("prediction", "margin", "radius", "runner_up", "status"):
        assert np.array_equal(theirs[column].to_numpy(), ours[column].to_numpy()), column


def test_files_and_json(report: lipcert.DatasetReport, tmp_path: Path) -> None:
    path = tmp_path / "radii.csv"
    report.to_csv(path)
    back = pd.read_csv(path)
    assert np.array_equal(back["radius"].to_numpy(), report.samples.radius)  # every digit
    payload = json.loads(report.to_json())
    assert payload["n"] == 300 and payload["accuracy"] == report.accuracy
    assert [e["eps"] for e in payload["certified_accuracy"]] == EPS
    assert payload["lipschitz_bound"] == report.lipschitz_bound
    assert payload["fp_allowance"]["max"] > 0


@pytest.mark.parametrize(
    ("eps", "match"),
    [
        pytest.param(["36/255"], "numbers", id="cli_string"),
        pytest.param([0.1, 0.1], "distinct", id="repeated"),
        pytest.param([-0.1], "eps > 0", id="negative"),
        pytest.param([float("nan")], "eps > 0", id="nan"),
        pytest.param([], "at least one eps", id="empty"),
    ],
)
def test_eps_are_numbers(tau8: lipcert.Model, eps: list[object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        lipcert.certify_dataset(tau8, fashion(4), eps=eps)  # type: ignore[arg-type]


def test_bad_data_is_refused(tau8: lipcert.Model) -> None:
    x, y = fashion(4)
    with pytest.raises(UsageError, match="as many labels"):
        lipcert.certify_dataset(tau8, (x, y[:3]))
    with pytest.raises(UsageError, match="at least one sample"):
        lipcert.certify_dataset(tau8, [])
    with pytest.raises(UsageError, match="pair"):
        lipcert.certify_dataset(tau8, [x])


def test_accumulator_equals_certify_dataset(tau8: lipcert.Model) -> None:
    x, y = fashion(150)
    metric = lipcert.CertifiedAccuracy(tau8, eps=EPS)
    for start in range(0, 150, 40):
        metric.update(x[start : start + 40], torch.from_numpy(y[start : start + 40]))
    values = metric.compute()
    whole = lipcert.certify_dataset(tau8, (x, y), eps=EPS)
    assert values["n"] == 150
    assert values["accuracy"] == whole.accuracy
    assert values["mcr"] == pytest.approx(whole.mcr, rel=1e-9)
    assert values["certified_accuracy"] == pytest.approx(whole.certified_accuracy, abs=1e-12)
    metric.reset()
    assert metric.compute()["n"] == 0 and np.isnan(metric.compute()["accuracy"])


def test_accumulator_in_a_training_loop_follows_the_weights() -> None:
    # each epoch bounds the module as it is then: after the weights change, a new model
    net = relu_2d(seed=4)
    x, y = points_2d(64, seed=2)
    first = lipcert.CertifiedAccuracy(lipcert.from_torch(net, (2,)), eps=[0.1]).update(x, y)
    with torch.no_grad():
        net[2].weight.mul_(2.0)
        net[2].bias.mul_(2.0)
    second = lipcert.from_torch(net, (2,))
    again = lipcert.CertifiedAccuracy(second, eps=[0.1]).update(x, y)
    # scaling the head scales margins and bound alike: same decisions, about the same radii
    assert np.array_equal(first.prediction, again.prediction)
    assert np.allclose(first.radius, again.radius, rtol=1e-3, atol=1e-6)
    with pytest.raises(UsageError, match=r"lipcert\.Model"):
        lipcert.CertifiedAccuracy(net, eps=[0.1])  # type: ignore[arg-type]
