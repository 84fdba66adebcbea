"""[tool.lipcert] found like pytest finds its config: up the tree, to the repository root."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

sys.path.insert(0, str(Path(__file__).parent / "certify"))
from linear_models import linear_onnx

from lipcert.cli import app
from lipcert.config import find_config, resolve_config
from lipcert.errors import UsageError

runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A repository with a model, a dataset and a sub-folder; its root is tmp_path/repo."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "sub" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3, 4))
    linear_onnx(root / "model.onnx", weight, np.zeros(3), (1, 2, 2))
    images = rng.integers(0, 256, size=(30, 1, 2, 2), dtype=np.uint8)
    labels = np.argmax(images.reshape(30, -1) @ weight.T, axis=1)
    labels[:10] = (labels[:10] + 1) % 3  # accuracy 2/3
    np.savez(root / "data.npz", x=images, y=labels)
    return root


def _certify(*args: object) -> Result:
    return runner.invoke(app, ["certify", *map(str, args)])


def test_found_in_a_parent_folder(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = project / "pyproject.toml"
    config.write_text('[tool.lipcert]\nmin-accuracy = 0.99\ndataset = "data.npz"\n')
    monkeypatch.chdir(project / "sub" / "deeper")
    result = _certify(project / "model.onnx", "--json", "--quiet")
    assert result.exit_code == 1, result.output  # the gate of ../../pyproject.toml applies
    report = json.loads(result.stdout)
    assert report["config"] == str(config)
    assert report["dataset"]["source"] == str(project / "data.npz")  # relative to the file
    assert report["gates"][0]["name"] == "clean accuracy"
    shown = _certify(project / "model.onnx")
    assert f"config{config}" in "".join(shown.stdout.split())  # long paths fold, never cut


def test_nearest_file_with_a_table_wins(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "pyproject.toml").write_text("[tool.lipcert]\nmin-accuracy = 0.99\n")
    (project / "sub" / "pyproject.toml").write_text("[tool.lipcert]\nmin-accuracy = 0.1\n")
    (project / "sub" / "deeper" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert find_config(project / "sub" / "deeper") == project / "sub" / "pyproject.toml"
    monkeypatch.chdir(project / "sub" / "deeper")
    result = _certify(project / "model.onnx", "--dataset", project / "data.npz", "--quiet")
    assert result.exit_code == 0, result.output


def test_search_stops_at_the_repository_root(project: Path) -> None:
    (project.parent / "pyproject.toml").write_text("[tool.lipcert]\nmin-accuracy = 0.99\n")
    assert find_config(project / "sub") is None
    (project / ".git").rmdir()
    assert find_config(project / "sub") == project.parent / "pyproject.toml"


def test_config_option_and_no_config(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "pyproject.toml").write_text("[tool.lipcert]\nmin-accuracy = 0.99\n")
    other = project / "ci.toml"
    other.write_text('[tool.lipcert]\neps = ["0.01", "1/8"]\n')
    monkeypatch.chdir(project)
    data = project / "data.npz"
    ignored = _certify("model.onnx", "--dataset", data, "--quiet", "--no-config", "--json")
    assert ignored.exit_code == 0 and json.loads(ignored.stdout)["config"] is None
    chosen = _certify("model.onnx", "--dataset", data, "--quiet", "--config", other, "--json")
    assert chosen.exit_code == 0
    report = json.loads(chosen.stdout)
    assert report["config"] == str(other)
    assert [c["label"] for c in report["certified_accuracy"]] == ["0.01", "1/8"]
    both = _certify("model.onnx", "--dataset", data, "--config", other, "--no-config")
    assert both.exit_code == 2 and "not both" in both.stderr
    missing = _certify("model.onnx", "--dataset", data, "--config", project / "nope.toml")
    assert missing.exit_code == 2 and "nope.toml" in missing.stderr


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("min-acuracy = 0.9", "unknown key 'min-acuracy' in [tool.lipcert] of '{path}'"),
        (
            "min-certified-accuracy = 70",
            "expected min-certified-accuracy in [tool.lipcert] of '{path}' to be a fraction in "
            "[0, 1] but got 70; did you mean 0.70?",
        ),
        ("min-mcr = nan", "expected a finite number for min-mcr in [tool.lipcert] of '{path}'"),
        ("limit = 0", "expected limit in [tool.lipcert] of '{path}' >= 1 but got 0"),
        ("eps = 0.5\ngate-eps = 0.5", "gate-eps in [tool.lipcert] of '{path}' sets the eps"),
        ("batch-size = '8'", "batch-size in [tool.lipcert] of '{path}' has an unusable value"),
        ("margins = 'float16'", "expected margins in [tool.lipcert] of '{path}' float32 or"),
    ],
    ids=["unknown", "percentage", "nan", "limit", "gate-eps-alone", "type", "margins"],
)
def test_bad_values_name_the_key_and_the_file(
    project: Path, monkeypatch: pytest.MonkeyPatch, table: str, message: str
) -> None:
    path = project / "pyproject.toml"
    path.write_text(f"[tool.lipcert]\n{table}\n")
    monkeypatch.chdir(project)
    result = _certify("model.onnx", "--dataset", "data.npz", "--quiet")
    assert result.exit_code == 2, result.output
    assert message.format(path=path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_ci_option_is_a_key(project: Path) -> None:
    path = project / "pyproject.toml"
    path.write_text(
        "[tool.lipcert]\n"
        'dataset = "data.npz"\ndata-dir = "."\nsplit = "test"\nlimit = 20\nbatch-size = 7\n'
        'threads = 1\neps = ["36/255", 0.5]\ngate-eps = "0.5"\nmin-certified-accuracy = 0.0\n'
        'min-accuracy = 0.5\nmin-mcr = -10\ncertificate = "global"\nmargins = "float64"\n'
        'mean = [0.5]\nstd = 0.25\ninput-shape = [1, 2, 2]\narch = "x:y"\n'
        'label-column = "target"\n'
    )
    config = resolve_config(start=project)
    assert config.path == path
    assert config.get("eps") == "36/255,0.5" and config.get("input_shape") == "1,2,2"
    assert config.get("data_dir") == str(project / ".")
    with pytest.raises(UsageError, match="unknown key 'model'"):
        path.write_text('[tool.lipcert]\nmodel = "m.onnx"\n')
        resolve_config(start=project)


def test_command_line_overrides_the_file(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "pyproject.toml").write_text(
        '[tool.lipcert]\ndataset = "data.npz"\nmin-accuracy = 0.99\nlimit = 5\n'
    )
    monkeypatch.chdir(project)
    result = _certify("model.onnx", "--min-accuracy", "0.1", "--limit", "12", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 12


def test_imagefolder_dataset_is_relative_to_the_file(project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.lipcert]\ndataset = "imagefolder:images/val"\n')
    dataset = resolve_config(start=project / "sub").get("dataset")
    assert dataset == f"imagefolder:{project / 'images' / 'val'}"
