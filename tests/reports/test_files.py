"""Result files written through reports.files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(not Path("/dev/stdout").exists(), reason="needs /dev/stdout")
def test_dev_stdout_on_a_pipe_is_written_in_place() -> None:
    """--csv /dev/stdout piped into another program: /dev/stdout resolves to pipe:[N], not a
    path, so the rows must go to the pipe, not through a temporary file beside it."""
    code = (
        "from lipcert.reports.files import write_atomically\n"
        "write_atomically('/dev/stdout', lambda handle: handle.write('a,b\\n1,2\\n'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "a,b\n1,2\n"
