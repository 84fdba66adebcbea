"""How a refused model must look: from the library, and from `lipcert verify`.

The library raises exactly the named LipcertError subclass with a message naming the file or
tensor at fault; the command answers exit code 2, one line `ErrorType: message` on stderr,
nothing on stdout and no traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from lipcert.cli import app
from lipcert.errors import LipcertError
from lipcert.frontends import load_model
from lipcert.model import LoadedModel, LoadOptions


def cli_args(path: Path, options: LoadOptions) -> list[str]:
    """`lipcert verify` arguments that load `path` with `options`."""
    args = ["verify", str(path)]
    if options.input_shape is not None:
        args += ["--input-shape", ",".join(str(d) for d in options.input_shape)]
    if options.arch is not None:
        args += ["--arch", options.arch]
    if options.trust_model:
        args.append("--trust-model")
    return args


def verify(path: Path, options: LoadOptions, *extra: str) -> Result:
    return CliRunner().invoke(app, [*cli_args(path, options), *extra])


def assert_one_line_error(result: Result, error: type[LipcertError], match: str) -> None:
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    name, _, message = lines[0].partition(": ")
    assert name == error.__name__
    assert re.search(match, message), message


def load_refused(path: Path, options: LoadOptions, error: type[LipcertError], match: str) -> str:
    """Assert that loading fails with exactly `error`, in the library and on the command line.

    Returns the library's message.
    """
    with pytest.raises(error, match=match) as info:
        load_model(path, options)
    assert type(info.value) is error
    assert_one_line_error(verify(path, options), error, match)
    return str(info.value)


def load(path: Path, options: LoadOptions | None = None) -> LoadedModel:
    return load_model(path, options or LoadOptions())
