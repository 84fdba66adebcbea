"""The command line is a layer over the public API: each command's work is an API call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import lipcert.api as api
from lipcert.certify.command import parse_eps_list
from lipcert.cli import app

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "sample_models" / "fmnist_ce_tau8.onnx"
DATA = ROOT / "sample_models" / "data" / "fashion_mnist_test_1000.npz"


def _spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[tuple, dict]]:
    """Record the calls of lipcert.api.<name>, which still does its work."""
    calls: list[tuple[tuple, dict]] = []
    original = getattr(api, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(api, name, spy)
    return calls


def test_certify_is_load_and_certify_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _spy(monkeypatch, "load")
    certifies = _spy(monkeypatch, "certify_dataset")
    arguments = ["certify", str(MODEL), "--dataset", str(DATA), "--limit", "40", "--json"]
    arguments += ["--eps", "36/255", "--mean", "0.1", "--std", "0.9", "--batch-size", "16"]
    result = CliRunner().invoke(app, [*arguments, "--threads", "1", "--no-config"])
    assert result.exit_code == 0, result.output
    assert len(loads) == 1 and len(certifies) == 1
    (model, data, eps), options = certifies[0]
    assert isinstance(model, api.Model) and len(data) == 40
    assert [e.value for e in eps] == [e.value for e in parse_eps_list("36/255")]
    assert options["batch_size"] == 16 and options["threads"] == 1
    assert options["mean"].tolist() == [0.1] and options["std"].tolist() == [0.9]
    # what the API returned is what the command wrote
    report = api.certify_dataset(model, data, eps, batch_size=16, threads=1, mean=0.1, std=0.9)
    assert json.loads(result.stdout)["mcr"] == report.mcr


def test_attack_is_attack_certificates(monkeypatch: pytest.MonkeyPatch) -> None:
    attacks = _spy(monkeypatch, "attack_certificates")
    arguments = ["attack", str(MODEL), "--dataset", str(DATA), "--limit", "10", "--steps", "2"]
    result = CliRunner().invoke(app, [*arguments, "--restarts", "1", "--no-distance", "--json"])
    assert result.exit_code == 0, result.output
    assert len(attacks) == 1
    _, options = attacks[0]
    assert options["steps"] == 2 and options["restarts"] == 1
    assert options["search_distance"] is False
    assert json.loads(result.stdout)["n"] == 10


def test_verify_is_load(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _spy(monkeypatch, "load")
    result = CliRunner().invoke(app, ["verify", str(MODEL), "--json"])
    assert result.exit_code == 0, result.output
    assert len(loads) == 1
    assert json.loads(result.stdout)["lipschitz_bound"] == api.load(MODEL).lipschitz_bound
