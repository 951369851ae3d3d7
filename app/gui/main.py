"""Start the desktop application: ``stagescope gui [PROJECT] [--screenshot FILE] [--image NAME]``.

Without a project it reopens the last one, or builds and opens the bundled sample project (in a
job, so the window is up at once).  ``--screenshot`` waits until the image, its detail and its
overlays are drawn, saves a PNG of the window and exits (offscreen when there is no display).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

SCREENSHOT_SIZE = (1600, 1000)
SCREENSHOT_TIMEOUT_S = 300.0


def configure_pyqtgraph() -> None:
    """Row-major images everywhere (numpy's (row, column) order), set once at start-up."""
    import pyqtgraph as pg

    from app.gui.theme import PLOT_BACKGROUND, PLOT_FOREGROUND

    pg.setConfigOptions(imageAxisOrder="row-major", antialias=False, background=PLOT_BACKGROUND,
                        foreground=PLOT_FOREGROUND)


def sample_project_job(folder: Path):
    """Job: build the sample project from its phantoms (first start only); returns its folder."""
    from app.core.jobs import Progress
    from app.demo import build_sample_project

    yield Progress("sample project", 0, 1, f"generating the sample project in {folder}")
    project = build_sample_project(folder)
    yield Progress("sample project", 1, 1, "done")
    return project.folder


def open_start_project(window: Any, project: Path | None, image: str | None) -> None:
    """Open the given project, else the most recent one, else the sample project (built if needed)."""
    if project is not None:
        window.open_project(project, image)
        return
    for folder in window.settings.recent_projects:
        if (Path(folder) / "project.json").is_file():
            window.open_project(folder, image)
            return
    from app.demo import default_demo_dir

    folder = default_demo_dir()
    if (folder / "project.json").is_file():
        window.open_project(folder, image)
        return
    window.queue.submit("Build the sample project", lambda: sample_project_job(folder), kind="sample",
                        on_success=lambda result: window.open_project(result, image))


def take_screenshot(window: Any, path: Path, timeout_s: float = SCREENSHOT_TIMEOUT_S) -> int:
    """Wait until everything is drawn, save the window as PNG; 0 when clean, 1 on errors or timeout."""
    start = time.monotonic()
    window.detect_device()  # now rather than after the start-up delay, so the status bar shows it
    ready = window.wait_until_ready(timeout_s)
    # jobs started by the start-up (sample project, overview levels) may have opened more work
    while ready and time.monotonic() - start < timeout_s and not window.is_ready():
        ready = window.wait_until_ready(timeout_s - (time.monotonic() - start))
    window.save_screenshot(path)
    status = 0
    if not ready:
        print(f"stagescope: warning: the window was not ready after {timeout_s:.0f} s; saved what was drawn",
              file=sys.stderr)
        status = 1
    for title, message, _details in window.errors:
        print(f"stagescope: error shown in the window: {title}: {message}", file=sys.stderr)
        status = 1
    print(f"screenshot saved to {path}")
    return status


def install_excepthook(window: Any) -> None:
    """Show unexpected exceptions (a bug in a slot) in the window with the traceback, not only in a terminal."""
    import traceback

    previous = sys.excepthook

    def hook(kind: type, error: BaseException, tb: Any) -> None:
        details = "".join(traceback.format_exception(kind, error, tb))
        try:
            window.show_error("Unexpected error", f"{kind.__name__}: {error}", details)
        except Exception:  # noqa: BLE001 - the window is gone: fall back to the terminal
            previous(kind, error, tb)
            return
        print(details, file=sys.stderr)

    sys.excepthook = hook


def main(args: Any) -> int:
    """Run the GUI; returns the exit code (args: .project, .screenshot, .image)."""
    screenshot = getattr(args, "screenshot", None)
    if screenshot is not None and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from app.core.settings import load_settings
    from app.gui.main_window import MainWindow
    from app.gui.palette import apply_theme
    from app.gui.workers import freeze_gc_heap

    configure_pyqtgraph()
    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("Stagescope")
    app.setOrganizationName("Stagescope")
    settings = load_settings()
    apply_theme(app, settings.theme)
    window = MainWindow(settings, save_settings_on_close=screenshot is None)
    freeze_gc_heap()  # short garbage-collector pauses from now on (see its docstring)
    install_excepthook(window)
    if screenshot is not None:
        window.resize(*SCREENSHOT_SIZE)
    window.show()
    project = getattr(args, "project", None)
    image = getattr(args, "image", None)
    open_start_project(window, Path(project) if project is not None else None, image)
    if screenshot is not None:
        status = take_screenshot(window, Path(screenshot))
        window.queue.shutdown()
        window.close()
        _wait_for_workers()
        return status
    status = int(app.exec())
    _wait_for_workers()
    return status


def _wait_for_workers(timeout_ms: int = 30000) -> None:
    """Let cancelled jobs reach their next progress event and clean up before the process ends."""
    from app.gui.job_queue import _LIVE_WORKERS

    for worker in list(_LIVE_WORKERS):
        try:
            worker.wait(timeout_ms)
        except RuntimeError:
            pass
