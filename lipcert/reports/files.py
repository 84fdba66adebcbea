"""Writing result files: checked before any work starts, then written atomically.

An interrupted run leaves no half-written file, a replaced file keeps its permissions (a new
one gets the usual 0666 less the umask, as `open` would give it), and an output that names an
input (the model, the dataset) or a folder is refused before anything runs.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from lipcert.errors import UsageError


def check_output_path(
    path: str | Path, *, option: str, inputs: Iterable[tuple[str, str | Path | None]] = ()
) -> None:
    """Refuse an output path that cannot be written or would destroy an input.

    `inputs` pairs a description ("the model") with a path; an output that is the same file
    (by inode, so links and relative spellings count) is refused.
    """
    target = Path(path).expanduser()
    shown = str(target)
    if target.is_dir():
        raise UsageError(f"expected {option} to name a file but {shown!r} is a folder")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {option} {shown!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) and not (
        target.exists() and not target.is_file() and os.access(target, os.W_OK)
    ):
        raise UsageError(f"cannot write {option} {shown!r}: folder {str(folder)!r} is not writable")
    if not target.exists():
        return
    for what, other in inputs:
        if other is None:
            continue
        try:
            same = os.path.samefile(target, Path(other).expanduser())
        except OSError:
            continue
        if same:
            raise UsageError(
                f"{option} {shown!r} is {what}; refusing to overwrite it (choose another file)"
            )


def write_atomically(path: str | Path, write: Callable[[IO[str]], None]) -> None:
    """Write text through a temporary file in the same folder, then rename it over `path`.

    A link is followed (the file it points to is replaced, not the link). A path that exists
    and is not a regular file (/dev/stdout, a pipe) is written in place, since renaming over
    it would replace the device or pipe.
    """
    _write_through_temporary(path, write, binary=False)


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    """`data` written as `write_atomically` writes text (a figure, say)."""
    _write_through_temporary(path, lambda handle: handle.write(data), binary=True)


def _write_through_temporary(path: str | Path, write: Callable[[Any], Any], binary: bool) -> None:
    given = Path(path).expanduser()
    mode_text = "wb" if binary else "w"
    text_options: dict[str, Any] = {} if binary else {"encoding": "utf-8", "newline": ""}
    # Checked before realpath: /dev/stdout on a pipe resolves to /proc/PID/fd/pipe:[N], no path.
    target = given if given.exists() and not given.is_file() else Path(os.path.realpath(given))
    if target.exists() and not target.is_file():
        if target.is_dir():
            raise UsageError(f"cannot write {str(path)!r}: it is a folder")
        with open(target, mode_text, **text_options) as handle:
            write(handle)
        return
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {str(path)!r}: folder {str(folder)!r} does not exist")
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else _default_mode()
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(descriptor, mode_text, **text_options) as handle:
            write(handle)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _default_mode() -> int:
    """0666 less the process's umask: the mode `open(path, "w")` gives a new file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def append_text(path: str | Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
