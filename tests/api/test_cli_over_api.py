"""The command line is a layer over the public API: each command's work is an API call, and
the command line parses option strings and reads config files while the API gets typed values.

`lipcert attack` reads batch-size and certificate from the [tool.lipcert] table found from
the working folder and hands them to `attack_certificates` as arguments; --input-shape
reaches `lipcert.load` as a tuple of ints, --eps as thresholds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from api_models import NPZ, TAU8
from typer.testing import CliRunner

import lipcert.api as api
from lipcert.certify.command import parse_eps_list
from lipcert.certify.metrics import Eps
from lipcert.cli import app


def _spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[tuple, dict]]:
    """Record the calls of lipcert.api.<name>, which still does its work."""
    calls: list[tuple[tuple, dict]] = []
    original = getattr(api, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(api, name, spy)
    return calls


def test_attack_takes_batch_size_and_certificate_from_the_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.lipcert]\nbatch-size = 3\ncertificate = "global"\n', encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    attacks = _spy(monkeypatch, "attack_certificates")
    arguments = ["attack", str(TAU8), "--dataset", str(NPZ), "--limit", "5", "--steps", "1"]
    result = CliRunner().invoke(app, [*arguments, "--restarts", "1", "--no-distance", "--quiet"])
    assert result.exit_code == 0, result.output
    ((_, options),) = attacks
    assert options["batch_size"] == 3 and options["certificate"] == "global"
    # the flag wins over the config
    attacks.clear()
    result = CliRunner().invoke(
        app,
        [*arguments, "--restarts", "1", "--no-distance", "--quiet", "--certificate", "pairwise"],
    )
    assert result.exit_code == 0, result.output
    assert attacks[0][1]["certificate"] == "pairwise" and attacks[0][1]["batch_size"] == 3


def test_input_shape_reaches_the_api_as_ints(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _spy(monkeypatch, "load")
    result = CliRunner().invoke(app, ["verify", str(TAU8), "--input-shape", "1x28x28", "--json"])
    assert result.exit_code == 0, result.output
    ((_, options),) = loads
    assert options["input_shape"] == (1, 28, 28)
    assert all(type(d) is int for d in options["input_shape"])
    bad = CliRunner().invoke(app, ["verify", str(TAU8), "--input-shape", "1,28,x"])
    assert bad.exit_code == 2
    assert "expected --input-shape like 3,32,32 but got '1,28,x'" in bad.stderr


def test_eps_reach_the_api_as_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    certifies = _spy(monkeypatch, "certify_dataset")
    arguments = ["certify", str(TAU8), "--dataset", str(NPZ), "--limit", "10", "--no-config"]
    result = CliRunner().invoke(app, [*arguments, "--eps", "36/255,0.5", "--quiet"])
    assert result.exit_code == 0, result.output
    (_, _, eps), _ = certifies[0]
    assert all(isinstance(e, Eps) for e in eps)
    assert [e.label for e in eps] == ["36/255", "0.5"]
    bad = CliRunner().invoke(app, [*arguments, "--eps", "36/0"])
    assert bad.exit_code == 2
    assert "expected --eps values with a non-zero denominator but got '36/0'" in bad.stderr


def test_certify_is_load_and_certify_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _spy(monkeypatch, "load")
    certifies = _spy(monkeypatch, "certify_dataset")
    arguments = ["certify", str(TAU8), "--dataset", str(NPZ), "--limit", "40", "--json"]
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
    arguments = ["attack", str(TAU8), "--dataset", str(NPZ), "--limit", "10", "--steps", "2"]
    result = CliRunner().invoke(app, [*arguments, "--restarts", "1", "--no-distance", "--json"])
    assert result.exit_code == 0, result.output
    assert len(attacks) == 1
    _, options = attacks[0]
    assert options["steps"] == 2 and options["restarts"] == 1
    assert options["search_distance"] is False
    assert json.loads(result.stdout)["n"] == 10


def test_verify_is_load(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _spy(monkeypatch, "load")
    result = CliRunner().invoke(app, ["verify", str(TAU8), "--json"])
    assert result.exit_code == 0, result.output
    assert len(loads) == 1
    assert json.loads(result.stdout)["lipschitz_bound"] == api.load(TAU8).lipschitz_bound
