"""docs/cli.md against the command line: options, exit codes, JSON keys and CSV columns."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "certify"))
from linear_models import linear_onnx

from lipcert.cli import app
from lipcert.errors import ExitCode
from lipcert.reports.certify_report import CSV_COLUMNS

runner = CliRunner()
DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
_OPTION = re.compile(r"`(--[a-z][a-z0-9-]*)")


def _sections() -> dict[str, str]:
    """The text of each `## \\`lipcert ...\\`` section, keyed by command ("" for the program)."""
    sections: dict[str, str] = {}
    for block in DOCS.read_text().split("\n## ")[1:]:
        title, _, body = block.partition("\n")
        match = re.match(r"`lipcert(?: ([a-z-]+))?", title)
        if match:
            sections[match.group(1) or ""] = body
    return sections


def _documented_options(body: str) -> set[str]:
    """Options named at the head of a list item (before its first ': ')."""
    items: list[str] = []
    for line in body.splitlines():
        if line.startswith("- "):
            items.append(line)
        elif line.startswith("  ") and items:
            items[-1] += " " + line.strip()
        else:
            items.append("")
    found: set[str] = set()
    for item in items:
        head = item.split(": ", 1)[0]
        if head.startswith("- `--"):
            found.update(_OPTION.findall(head))
    return found


def _command_options() -> dict[str, set[str]]:
    group = typer.main.get_command(app)
    ctx = typer.Context(group)

    def options(command) -> set[str]:  # type: ignore[no-untyped-def]
        names = {"--help"}
        for param in command.get_params(ctx):
            if param.param_type_name == "option" and not getattr(param, "hidden", False):
                names.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
        return names

    result = {"": options(group)}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        result[name] = options(command)
    return result


def test_every_command_is_documented() -> None:
    assert set(_sections()) == set(_command_options())


@pytest.mark.parametrize("command", sorted(_command_options()))
def test_options_match_the_help(command: str) -> None:
    documented = _documented_options(_sections()[command])
    actual = _command_options()[command]
    assert documented == actual, (
        f"in --help, not in docs/cli.md: {sorted(actual - documented)}; "
        f"in docs/cli.md, not in --help: {sorted(documented - actual)}"
    )
    help_text = runner.invoke(app, [*([command] if command else []), "--help"]).stdout
    for option in actual:
        assert option in help_text


def test_exit_codes_are_documented() -> None:
    table = DOCS.read_text().split("## Exit codes")[1].split("\n## ")[0]
    rows = {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    assert {int(code) for code in ExitCode} <= rows


def _keys(value: object, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            keys.add(key)
            keys |= _keys(inner)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        keys |= _keys(value[0])
    return keys


def test_json_keys_and_csv_columns_are_documented(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3, 4))
    model = linear_onnx(tmp_path / "m.onnx", weight, np.zeros(3), (1, 2, 2))
    data = tmp_path / "d.npz"
    images = rng.integers(0, 256, size=(12, 1, 2, 2), dtype=np.uint8)
    np.savez(data, x=images, y=np.argmax(images.reshape(12, -1) @ weight.T, axis=1))
    sections = _sections()
    certify = runner.invoke(
        app,
        [
            "certify",
            str(model),
            "--dataset",
            str(data),
            "--json",
            "--quiet",
            "--no-config",
            "--min-accuracy",
            "0.5",
        ],
    )
    assert certify.exit_code == 0, certify.output
    for key in _keys(json.loads(certify.stdout)):
        assert f"`{key}`" in sections["certify"], key
    for column in CSV_COLUMNS:
        assert f"`{column}`" in sections["certify"].split("CSV columns")[1], column
    verify = runner.invoke(app, ["verify", str(model), "--json", "--expect", "100"])
    for key in _keys(json.loads(verify.stdout)):
        assert f"`{key}`" in sections["verify"], key
