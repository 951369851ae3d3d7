"""Shared fixtures: offscreen Qt, user folders redirected to tmp, the real data beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """No test reads or writes the real user data or settings folders."""
    base = tmp_path_factory.mktemp("userdirs")
    monkeypatch.setenv("STAGESCOPE_DATA_DIR", str(base / "data"))
    monkeypatch.setenv("STAGESCOPE_CONFIG_DIR", str(base / "config"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder (../shared/data); tests needing it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not present")
    return SHARED_DATA
