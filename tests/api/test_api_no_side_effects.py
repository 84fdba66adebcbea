"""Library code never parses command-line strings, never prints, never modifies its arguments.

Every caller-owned object handed to the API (numpy arrays, torch tensors, a Dataset, eps
lists, a DataLoader's batches, a loaded graph) is checked after the call against a copy made
before it; the arrays are also made read-only, so that an in-place write raises where it
happens instead of passing unnoticed when it writes the same values back.
"""

from __future__ import annotations

import ast
import importlib.util
import pickle
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from api_models import NPZ, ROOT, SAMPLES, TAU8, fashion, linear_2d, points_2d

import lipcert
from lipcert.certify.command import parse_eps_list
from lipcert.errors import UsageError

PACKAGE = ROOT / "lipcert"
# The command line: it parses option strings and writes to the terminal.
CLI_MODULES = {"lipcert/cli.py", "lipcert/__main__.py", "lipcert/certify/command.py"}


@pytest.fixture(scope="module")
def tau8() -> lipcert.Model:
    return lipcert.load(TAU8)


def _frozen(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = fashion(n)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _unchanged(array: np.ndarray, before: np.ndarray) -> None:
    assert array.dtype == before.dtype and array.shape == before.shape
    assert np.array_equal(array, before)


def test_certify_and_certify_dataset_leave_arrays_and_eps_as_given(tau8: lipcert.Model) -> None:
    x, y = _frozen(24)
    x_before, y_before = x.copy(), y.copy()
    eps = [36 / 255, 0.5]
    eps_before = list(eps)
    mean, std = np.array([0.3]), np.array([0.45])
    mean.flags.writeable = std.flags.writeable = False
    tau8.certify(x, y, eps=eps)
    report = lipcert.certify_dataset(tau8, (x, y), eps=eps, mean=mean, std=std, batch_size=7)
    # the gate's eps and a robustness eps outside the list: a new list, not the caller's
    report.gates(min_certified_accuracy=0.0, gate_eps=0.5)
    _unchanged(x, x_before)
    _unchanged(y, y_before)
    assert eps == eps_before and mean.tolist() == [0.3] and std.tolist() == [0.45]


def test_torch_tensors_and_batches_are_left_as_given(tau8: lipcert.Model) -> None:
    x, y = fashion(20)
    # numpy() of a CPU tensor shares its memory: a write through the view would show here
    tx, ty = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    batches = [(tx[:10], ty[:10]), (tx[10:], ty[10:])]
    lipcert.certify_dataset(tau8, batches, eps=[0.1], mean=[0.3], std=[0.45])
    tau8.certify(tx, ty, precision="float64")
    metric = lipcert.CertifiedAccuracy(tau8, eps=[0.1])
    metric.update(tx, ty)
    assert torch.equal(tx, torch.from_numpy(x)) and torch.equal(ty, torch.from_numpy(y))


def test_a_dataset_is_left_as_given(tau8: lipcert.Model) -> None:
    data = lipcert.load_dataset(str(NPZ), limit=30)
    data.images.flags.writeable = False
    data.labels.flags.writeable = False
    before = pickle.dumps(data)
    report = lipcert.certify_dataset(tau8, data, eps=[36 / 255], mean=0.3, std=0.45)
    refined = report.refine(budget=1.0)
    assert pickle.dumps(data) == before
    # refine returns a new report: the first keeps its radii
    assert refined is not report and report.refinement is None


# torch warns when it wraps a read-only array: the attack works on a copy of its own
@pytest.mark.filterwarnings("error:The given NumPy array is not writable:UserWarning")
def test_compare_and_attack_leave_their_arguments_as_given(tau8: lipcert.Model) -> None:
    x, y = _frozen(12)
    eps = [36 / 255]
    lipcert.compare_models([tau8], (x, y), eps=eps, robustness=0.5)
    assert eps == [36 / 255]  # the robustness eps is added to the comparison's own list
    model = lipcert.from_torch(linear_2d(seed=3), (2,))
    points, labels = points_2d(10, seed=3)
    points.flags.writeable = False
    before = points.copy()
    lipcert.attack_certificates(model, (points, labels), steps=2, restarts=1)
    _unchanged(points, before)
    if importlib.util.find_spec("matplotlib") is not None:
        from lipcert import plots

        plots.plot_decision_regions(model, points, labels, resolution=20)
        _unchanged(points, before)
    _unchanged(x, fashion(12)[0])


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.onnx")))
def test_bounding_leaves_the_loaded_graph_as_it_was(name: str) -> None:
    # analyse fuses patterns in a copy; the constants it shares with the loaded graph are
    # read-only here, so a write into one raises, and the graph pickles the same afterwards
    from lipcert.bounds.compose import analyse
    from lipcert.frontends import load_model
    from lipcert.model import LoadOptions

    loaded = load_model(SAMPLES / name, LoadOptions())
    for value in loaded.graph.constants.values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    before = pickle.dumps(loaded.graph)
    analysis = analyse(loaded.graph)
    assert pickle.dumps(loaded.graph) == before
    assert analysis.graph is not loaded.graph


def test_eps_take_exact_fractions_rounded_up_as_the_command_line_does(
    tau8: lipcert.Model,
) -> None:
    x, y = fashion(8)
    report = lipcert.certify_dataset(tau8, (x, y), eps=[Fraction(36, 255), Fraction(1)])
    (typed, one) = report.eps
    # independent ground truth: exact rational comparisons of the float chosen
    assert Fraction(typed.value) >= Fraction(36, 255)
    assert Fraction(float(np.nextafter(typed.value, 0))) < Fraction(36, 255)
    assert typed.label == "12/85" and one.label == "1" and one.value == 1.0
    # the float nearest 36/255 is below it: a radius equal to it would not exceed 36/255
    assert Fraction(36 / 255) < Fraction(36, 255) and typed.value > 36 / 255
    assert typed.value == parse_eps_list("36/255")[0].value
    assert set(report.certified_accuracy) == {typed.value, 1.0}
    with pytest.raises(UsageError, match="numbers"):
        lipcert.certify_dataset(tau8, (x, y), eps="36/255")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="eps > 0"):
        lipcert.certify_dataset(tau8, (x, y), eps=[Fraction(0)])
    with pytest.raises(UsageError, match="distinct"):
        lipcert.certify_dataset(tau8, (x, y), eps=[Fraction(1, 2), 0.5])


def _library_files() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if str(p.relative_to(ROOT)) not in CLI_MODULES and "__pycache__" not in p.parts
    )


def _terminal_use(source: str, relative: str) -> list[str]:
    """print() calls and imports of typer/click (rich outside reports) in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        if is_call and node.func.id == "print":  # type: ignore[attr-defined]
            found.append(f"{relative}:{getattr(node, 'lineno', 0)} print()")
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in ("typer", "click") or (
                top == "rich" and not relative.startswith("lipcert/reports/")
            ):
                found.append(f"{relative}:{getattr(node, 'lineno', 0)} imports {name}")
    return found


def test_library_code_neither_prints_nor_imports_the_cli_toolkit() -> None:
    # reports render onto a console the command line hands them: rich is theirs to use
    found = []
    for path in _library_files():
        relative = str(path.relative_to(ROOT))
        found += _terminal_use(path.read_text(encoding="utf-8"), relative)
    assert found == []


def test_the_check_sees_prints_and_terminal_imports() -> None:
    source = "import typer\nfrom rich.table import Table\ndef f():\n    print('x')\n"
    found = _terminal_use(source, "lipcert/api/fake.py")
    assert found == [
        "lipcert/api/fake.py:1 imports typer",
        "lipcert/api/fake.py:2 imports rich.table",
        "lipcert/api/fake.py:4 print()",
    ]
    assert _terminal_use("from rich.table import Table\n", "lipcert/reports/x.py") == []


def test_command_line_parsers_live_with_the_command_line() -> None:
    import lipcert.certify.metrics as metrics
    import lipcert.model as model

    assert not hasattr(metrics, "parse_eps_list") and not hasattr(metrics, "parse_number")
    assert not hasattr(model, "parse_input_shape")
    from lipcert.frontends.declared import declared_input_shape

    # the library takes the parsed tuple, as the command line hands it over
    onnx = SAMPLES / "cifar10_shaped_ce_tau16.onnx"
    assert declared_input_shape(onnx, (3, 24, 24)) == (3, 24, 24)
    assert declared_input_shape(onnx) == (3, 32, 32)
