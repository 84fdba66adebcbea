"""Dependencies point one way: a module imports only from its own layer or the layers below.

The layers, from the bottom (see STYLE.md): errors and numerics; the graph; model inputs
(front-ends, dataset readers); bounds and the certificate spec; runtimes (evaluators);
certification and attack; reports; the application (the Python API, commands that write
reports, comparisons, plots); the CLI. Every import counts, also those inside functions
(a lazy import is still a dependency) and those for type checking only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lipcert"

# (layer, module prefixes). A module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors and numerics", ("lipcert.errors", "lipcert.bounds.numeric")),
    ("graph", ("lipcert.graph", "lipcert.model")),
    ("model inputs", ("lipcert.frontends", "lipcert.datasets", "lipcert.zoo")),
    ("bounds and spec", ("lipcert.bounds",)),
    ("runtimes", ("lipcert.evaluators", "lipcert.runtime", "lipcert.empirical")),
    ("certification and attack", ("lipcert.certify", "lipcert.attack", "lipcert.local")),
    ("reports", ("lipcert.reports",)),
    (
        "application",
        (
            "lipcert.api",
            "lipcert.compare",
            "lipcert.plots",
            # The user's configuration ([tool.lipcert]) is read by the commands only.
            "lipcert.config",
            # Commands: they load, certify and write reports, so they sit above reports.
            "lipcert.certify.command",
        ),
    ),
    ("cli", ("lipcert.cli", "lipcert.__main__")),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[0]
            ):
                best = (len(prefix), index)
    return None if best is None else best[1]


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported lipcert module) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            # `from lipcert.x import y` may import the submodule lipcert.x.y
            found.append((node.lineno, source))
            found.extend((node.lineno, f"{source}.{alias.name}") for alias in node.names)
    return [(line, name) for line, name in found if name.startswith("lipcert.")]


def _modules() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE
    )


def _existing(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_every_module_has_a_layer() -> None:
    missing = [_module_name(p) for p in _modules() if layer_of(_module_name(p)) is None]
    assert missing == [], f"give these modules a layer in LAYERS: {missing}"


def test_imports_point_down() -> None:
    # lipcert/__init__.py is the facade: it re-exports the API lazily and holds __version__,
    # the one name lower modules (the CLI) import from it.
    violations = []
    for path in _modules():
        module = _module_name(path)
        own = layer_of(module)
        if own is None:
            continue
        for line, name in imports_of(path, module):
            if not _existing(name):
                continue  # `from lipcert.x import some_function`
            other = layer_of(name)
            if other is not None and other > own:
                violations.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} ({LAYERS[own][0]}) imports "
                    f"{name} ({LAYERS[other][0]})"
                )
    assert violations == [], "imports that point up:\n" + "\n".join(violations)


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        pytest.param("lipcert.graph.geometry", "graph", id="geometry_with_the_graph"),
        pytest.param("lipcert.bounds.spec", "bounds and spec", id="spec_with_bounds"),
        pytest.param("lipcert.bounds.numeric", "errors and numerics", id="numerics_lowest"),
        pytest.param("lipcert.certify.command", "application", id="command_above_reports"),
        pytest.param("lipcert.certify.radii", "certification and attack", id="radii"),
        pytest.param("lipcert.api.model", "application", id="api"),
    ],
)
def test_layer_table(module: str, layer: str) -> None:
    index = layer_of(module)
    assert index is not None and LAYERS[index][0] == layer


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    # the same parser on a made-up graph module that imports a rule, lazily
    source = tmp_path / "fake.py"
    source.write_text("def f():\n    from lipcert.bounds.rules import structure\n")
    found = imports_of(source, "lipcert.graph.fake")
    names = {name for _, name in found}
    assert "lipcert.bounds.rules.structure" in names
    graph, bounds = layer_of("lipcert.graph.fake"), layer_of("lipcert.bounds.rules.structure")
    assert graph is not None and bounds is not None and bounds > graph
