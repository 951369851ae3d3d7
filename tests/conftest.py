"""Shared fixtures: offscreen Qt, user folders redirected to tmp, the real data beside the repo."""

from __future__ import annotations

import os
import sys
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


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    """Models a test loaded (or faked: oracle networks under a shipped model's sha256) stay with that test.

    The runner keeps loaded models per process (once per worker in a batch); without this a later
    test in the same process would be handed an earlier test's stand-ins.
    """
    yield
    runner = sys.modules.get("app.pipelines.runner")
    if runner is not None:
        runner.clear_model_cache()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder (../shared/data); tests needing it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not present")
    return SHARED_DATA
