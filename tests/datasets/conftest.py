"""Every dataset test runs with empty download caches and no $LIPCERT_DATA.

No test reads the real home folder or the machine's /usr/share/datasets unless it says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lipcert.datasets import locate


@pytest.fixture(autouse=True)
def cache_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Two empty cache roots standing in for the real ones; HOME and cwd moved to tmp."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(locate.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    roots = [tmp_path / "cache_a", tmp_path / "cache_b"]
    monkeypatch.setattr(locate, "cache_roots", lambda: list(roots))
    return roots
