"""The main window as the GUI tests open it (not a test module): the app's pyqtgraph set-up, default settings that
are never saved, no device probe, closed by qtbot after the test."""

from __future__ import annotations

from typing import Any


def main_window(qtbot: Any, size: tuple[int, int] | None = (1200, 800), show: bool = True, settings: Any = None) -> Any:
    """A MainWindow registered with ``qtbot`` (``settings``: default ones); resized to ``size`` (None: its own) and
    shown unless ``show`` is False."""
    from app.core.settings import Settings
    from app.gui.main import configure_pyqtgraph
    from app.gui.main_window import MainWindow

    configure_pyqtgraph()
    window = MainWindow(settings or Settings(), save_settings_on_close=False, detect_device=False)
    qtbot.addWidget(window)
    if size is not None:
        window.resize(*size)
    if show:
        window.show()
    return window
