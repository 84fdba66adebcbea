"""The command line parses option strings and reads config files; the API gets typed values.

`lipcert attack` reads batch-size and certificate from the [tool.lipcert] table found from
the working folder and hands them to `attack_certificates` as arguments; --input-shape
reaches `lipcert.load` as a tuple of ints, --eps as thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from api_models import NPZ, TAU8
from typer.testing import CliRunner

import lipcert.api as api
from lipcert.certify.metrics import Eps
from lipcert.cli import app


def _spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[tuple, dict]]:
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
