"""Where things live: bundled resources and models (from source or a PyInstaller bundle) and user data.

From source, bundled things sit at the repository root (``resources/``, ``models/``); in a frozen
PyInstaller app they sit under ``sys._MEIPASS`` (the spec must add them as data with the same
names).  User data and settings go where platformdirs says, unless an environment variable points
elsewhere; tests set those variables so they never touch a real user's files.  Nothing here creates
folders: callers that write create what they need.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs

APP_NAME = "Stagescope"
DATA_DIR_ENV = "STAGESCOPE_DATA_DIR"
CONFIG_DIR_ENV = "STAGESCOPE_CONFIG_DIR"
DOCUMENTS_DIR_ENV = "STAGESCOPE_DOCUMENTS_DIR"
SAMPLE_PROJECT_DIR = "sample-project"  # bundle-root folder the PyInstaller spec fills with the built sample
SETTINGS_FILE = "settings.json"


def _env_path(variable: str) -> Path | None:
    """The folder an environment variable names (``~`` expanded), or None when unset or empty."""
    value = os.environ.get(variable, "").strip()
    return Path(value).expanduser().absolute() if value else None


def is_frozen() -> bool:
    """True inside a PyInstaller bundle (the installed app), False when running from source."""
    return bool(getattr(sys, "frozen", False) and getattr(sys, "_MEIPASS", None))


def bundle_root() -> Path:
    """Root of the bundled files: ``sys._MEIPASS`` when frozen by PyInstaller, else the repository."""
    if is_frozen():
        return Path(sys._MEIPASS)  # type: ignore[attr-defined]
    return Path(__file__).resolve().parents[2]


def resource_dir() -> Path:
    """Folder of bundled resources (icons, style, the sample project)."""
    return bundle_root() / "resources"


def bundled_models_dir() -> Path:
    """Folder of the models shipped with the app (one sub-folder per model)."""
    return bundle_root() / "models"


def bundled_sample_project_dir() -> Path:
    """The ready-made sample project inside an installed app (absent from source: it is generated there)."""
    return bundle_root() / SAMPLE_PROJECT_DIR


def documents_dir() -> Path:
    """Where the user's projects go by default (``$STAGESCOPE_DOCUMENTS_DIR`` or ~/Documents/Stagescope)."""
    return _env_path(DOCUMENTS_DIR_ENV) or platformdirs.user_documents_path() / APP_NAME


def user_data_dir() -> Path:
    """The user's data folder (``$STAGESCOPE_DATA_DIR`` or the platform's, e.g. ~/.local/share/Stagescope)."""
    return _env_path(DATA_DIR_ENV) or platformdirs.user_data_path(APP_NAME, appauthor=False)


def user_models_dir() -> Path:
    """Folder of models the user trained or imported (one sub-folder per model)."""
    return user_data_dir() / "models"


def config_dir() -> Path:
    """The user's settings folder (``$STAGESCOPE_CONFIG_DIR`` or the platform's, e.g. ~/.config/Stagescope)."""
    return _env_path(CONFIG_DIR_ENV) or platformdirs.user_config_path(APP_NAME, appauthor=False)


def settings_path() -> Path:
    """The settings file of this user."""
    return config_dir() / SETTINGS_FILE
