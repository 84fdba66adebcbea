"""Writing result files atomically: an interrupted run leaves no half-written file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from lipcert.errors import UsageError


def write_atomically(path: str | Path, write: Callable[[IO[str]], None]) -> None:
    """Write through a temporary file in the same folder, then rename it over `path`."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"cannot write {str(target)!r}: folder {str(folder)!r} does not exist")
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def append_text(path: str | Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
