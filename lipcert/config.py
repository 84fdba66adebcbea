"""Defaults for `lipcert certify` from a `[tool.lipcert]` table, found the way pytest finds its own.

Search: the nearest `pyproject.toml` holding a `[tool.lipcert]` table, from the working folder
up through its parents, stopping at the repository root (a folder holding `.git`) or the
filesystem root. `--config PATH` names the file instead (a `pyproject.toml` or any TOML file
with a `[tool.lipcert]` table); `--no-config` reads none. Command-line options override the
file. Keys take dashes or underscores; relative paths in the file (`data-dir`, and a `dataset`
that is a file) are relative to the file's folder, as pytest's are to its rootdir.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipcert.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TABLE = "[tool.lipcert]"

# key -> the TOML types it accepts; lists become comma-separated text, as on the command line.
KEYS: dict[str, tuple[type, ...]] = {
    "dataset": (str,),
    "data_dir": (str,),
    "split": (str,),
    "label_column": (str,),
    "limit": (int,),
    "batch_size": (int,),
    "threads": (int,),
    "eps": (str, list, int, float),
    "gate_eps": (str, int, float),
    "min_certified_accuracy": (int, float),
    "min_accuracy": (int, float),
    "min_mcr": (int, float),
    "certificate": (str,),
    "margins": (str,),
    "mean": (str, list, int, float),
    "std": (str, list, int, float),
    "input_shape": (str, list),
    "arch": (str,),
}
_PATH_KEYS = frozenset({"data_dir"})


@dataclass(frozen=True)
class Config:
    """The [tool.lipcert] values (keys with underscores) and the file they come from."""

    values: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def origin(self, key: str) -> str:
        """How an error message names the key: `min-accuracy in [tool.lipcert] of FILE`."""
        return f"{key.replace('_', '-')} in {TABLE} of {str(self.path)!r}"


def find_config(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml with a [tool.lipcert] table, from `start` up to the repo root."""
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / "pyproject.toml"
        if path.is_file() and _table(_read(path), path) is not None:
            return path
        if (candidate / ".git").exists():
            return None
    return None


def resolve_config(
    path: Path | None = None, *, no_config: bool = False, start: Path | None = None
) -> Config:
    """The config to use: --config PATH, else the nearest one found, else none."""
    if no_config:
        if path is not None:
            raise UsageError("expected --config or --no-config, not both")
        return Config()
    if path is not None:
        if not path.is_file():
            raise UsageError(
                f"expected --config to name a TOML file but found no file {str(path)!r}"
            )
        document = _read(path)
        if _table(document, path) is None:
            raise UsageError(f"expected a {TABLE} table in {str(path)!r} but found none")
        return Config(_values(document, path), path)
    found = find_config(start)
    if found is None:
        return Config()
    return Config(_values(_read(found), found), found)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {str(path)!r}: {exc}") from None


def _table(document: dict[str, Any], path: Path) -> dict[str, Any] | None:
    tool = document.get("tool", {})
    table = tool.get("lipcert") if isinstance(tool, dict) else None
    if table is not None and not isinstance(table, dict):
        raise UsageError(f"expected a table {TABLE} in {str(path)!r} but found a value")
    return table


def _values(document: dict[str, Any], path: Path) -> dict[str, Any]:
    table = _table(document, path) or {}
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in KEYS:
            known = ", ".join(k.replace("_", "-") for k in KEYS)
            raise UsageError(f"unknown key {key!r} in {TABLE} of {str(path)!r}; known: {known}")
        if isinstance(value, bool) or not isinstance(value, KEYS[name]):
            raise UsageError(f"{key} in {TABLE} of {str(path)!r} has an unusable value {value!r}")
        if isinstance(value, list):
            if not value or any(isinstance(v, (bool, list, dict)) for v in value):
                raise UsageError(
                    f"{key} in {TABLE} of {str(path)!r} has an unusable value {value!r}"
                )
            value = ",".join(str(v) for v in value)
        if name in _PATH_KEYS:
            value = str(_relative_to(path, str(value)))
        values[name] = value
    dataset = values.get("dataset")
    if dataset is not None:
        values["dataset"] = _dataset_path(path, dataset)
    return values


def _relative_to(config: Path, text: str) -> Path:
    given = Path(text).expanduser()
    return given if given.is_absolute() else config.parent / given


def _dataset_path(config: Path, text: str) -> str:
    """A dataset file (or imagefolder:PATH) named relative to the config's folder; a dataset
    name unchanged."""
    from lipcert.datasets.catalog import canonical_name
    from lipcert.datasets.imagefolder import PREFIX, is_imagefolder

    if canonical_name(text) is not None:
        return text
    if is_imagefolder(text):
        return PREFIX + str(_relative_to(config, text[len(PREFIX) :]))
    return str(_relative_to(config, text))
