"""Tests for app.core.paths: bundled folders from source and frozen, user folders from the environment."""

from __future__ import annotations

import sys
from pathlib import Path

import platformdirs
import pytest

from app.core import paths

REPO = Path(__file__).resolve().parents[1]


def test_bundled_dirs_from_source() -> None:
    assert paths.resource_dir() == REPO / "resources"
    assert paths.bundled_models_dir() == REPO / "models"


def test_bundled_dirs_when_frozen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert paths.resource_dir() == tmp_path / "resources"
    assert paths.bundled_models_dir() == tmp_path / "models"


def test_user_dirs_follow_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGESCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STAGESCOPE_CONFIG_DIR", str(tmp_path / "config"))
    assert paths.user_data_dir() == tmp_path / "data"
    assert paths.user_models_dir() == tmp_path / "data" / "models"
    assert paths.settings_path() == tmp_path / "config" / "settings.json"
    assert not (tmp_path / "data").exists()  # asking for a path creates nothing


def test_user_dirs_default_to_platformdirs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGESCOPE_DATA_DIR", "")
    monkeypatch.delenv("STAGESCOPE_CONFIG_DIR", raising=False)
    assert paths.user_data_dir() == platformdirs.user_data_path("Stagescope", appauthor=False)
    assert paths.settings_path() == platformdirs.user_config_path("Stagescope", appauthor=False) / "settings.json"
    assert "Stagescope" in str(paths.user_models_dir())
