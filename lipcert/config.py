"""Defaults for `lipcert certify` from `[tool.lipcert]` in the working directory's pyproject.toml.

Command-line options override them. Keys (dashes or underscores):
eps, gate-eps, min-certified-accuracy, min-accuracy, min-mcr, certificate, batch-size.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lipcert.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_TYPES: dict[str, tuple[type, ...]] = {
    "eps": (str, list),
    "gate_eps": (str, int, float),
    "min_certified_accuracy": (int, float),
    "min_accuracy": (int, float),
    "min_mcr": (int, float),
    "certificate": (str,),
    "batch_size": (int,),
}


def load_config(directory: Path | None = None) -> dict[str, Any]:
    """The [tool.lipcert] table, with keys normalised to underscores; {} when absent."""
    path = (directory or Path.cwd()) / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {str(path)!r}: {exc}") from None
    table = document.get("tool", {}).get("lipcert", {})
    if not isinstance(table, dict):
        raise UsageError(f"expected a table [tool.lipcert] in {str(path)!r}")
    config: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in _TYPES:
            known = ", ".join(k.replace("_", "-") for k in _TYPES)
            raise UsageError(
                f"unknown key {key!r} in [tool.lipcert] of {str(path)!r}; known: {known}"
            )
        if isinstance(value, bool) or not isinstance(value, _TYPES[name]):
            raise UsageError(
                f"[tool.lipcert] {key} in {str(path)!r} has an unusable value {value!r}"
            )
        config[name] = ",".join(str(v) for v in value) if isinstance(value, list) else value
    return config
