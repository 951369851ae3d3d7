"""What the window's controllers may use of the main window and of each other (typing.Protocol).

The controllers type their ``window`` against :class:`WindowApi` instead of importing
:class:`app.gui.main_window.MainWindow`, which imports them: no import loop, and each controller's
reach into the window is written down.  A controller seen from another one is a narrow protocol too
(:class:`ResultsApi`, ...), so this module imports no controller.  tests/test_gui_session.py checks
that a real window has every member named here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # types only; none of these modules imports a controller or the window
    from PySide6.QtCore import QTimer
    from PySide6.QtGui import QAction, QPixmap, QUndoGroup
    from PySide6.QtWidgets import QDockWidget, QLabel, QMenu, QMenuBar, QMessageBox, QStatusBar

    from app.core.session import Session
    from app.core.settings import Settings
    from app.gui.channel_panel import ChannelPanel
    from app.gui.curation import CurationSession
    from app.gui.image_tools import ImageTools
    from app.gui.job_queue import JobQueue
    from app.gui.job_queue_widget import JobQueueWidget
    from app.gui.layers_panel import LayersPanel
    from app.gui.project_browser import ProjectBrowser
    from app.gui.properties_panel import PropertiesPanel
    from app.gui.run_panel import RunPanel
    from app.gui.tile_viewer import TileViewer


class ProjectsApi(Protocol):
    """The project controller, as the other controllers see it."""

    def need_project(self) -> bool: ...


class ResultsApi(Protocol):
    """The results controller, as the other controllers see it."""

    doc: dict[str, Any] | None

    def busy(self) -> bool: ...

    def forget(self) -> None: ...

    def show_run(self, run: Any) -> bool: ...

    def current_session(self) -> CurationSession | None: ...


class CurationApi(Protocol):
    """The curation controller, as the other controllers see it."""

    add_mode: bool

    def show_selected(self, layer: str, obj: dict[str, Any]) -> None: ...

    def clear_selection(self) -> None: ...

    def push_edit(self, action: str, object_id: Any, value: Any = None, **extra: Any) -> bool: ...

    def set_add_mode(self, on: bool) -> None: ...


class RunsApi(Protocol):
    """The run controller, as the other controllers see it."""

    facts: dict[str, Any]
    selection_timer: QTimer

    def submit_run(self, request: Any) -> Any: ...


class HooksApi(Protocol):
    """The window hooks (status bar, device, screenshots), as the other controllers see them."""

    def detect_device(self) -> None: ...


class WindowApi(Protocol):
    """The main window as its controllers use it: widgets, shown state, messages and a few Qt calls."""

    settings: Settings
    session: Session
    queue: JobQueue
    undo_group: QUndoGroup
    viewer: TileViewer
    browser: ProjectBrowser
    properties: PropertiesPanel
    layers_panel: LayersPanel
    channel_panel: ChannelPanel
    run_panel: RunPanel
    jobs_widget: JobQueueWidget
    docks: dict[str, QDockWidget]
    actions: dict[str, QAction]
    recent_menu: QMenu
    image_tools: ImageTools
    coords_label: QLabel
    value_label: QLabel
    device_label: QLabel
    projects: ProjectsApi
    results: ResultsApi
    curation: CurationApi
    runs: RunsApi
    hooks: HooksApi
    project: Any  # the open project, or None (Session.project)
    current_image: str | None  # Session.image
    current_run: Any  # Session.run

    def show_error(self, title: str, message: str, details: str = "") -> QMessageBox: ...

    def guard(self, title: str, function: Any, *args: Any) -> Any: ...

    def confirm(self, title: str, text: str) -> bool: ...

    def open_image(self, name: str | None) -> None: ...

    def step_image(self, step: int) -> None: ...

    def export_report_dialog(self) -> None: ...

    def save_settings(self) -> None: ...

    # QMainWindow's own, as far as the controllers call them
    def statusBar(self) -> QStatusBar: ...  # noqa: N802 - Qt's name

    def menuBar(self) -> QMenuBar: ...  # noqa: N802 - Qt's name

    def addAction(self, action: QAction) -> None: ...  # noqa: N802 - Qt's name

    def findChildren(self, kind: Any) -> list[Any]: ...  # noqa: N802 - Qt's name

    def grab(self) -> QPixmap: ...

    def close(self) -> bool: ...


def missing_members(window: object) -> list[str]:
    """The members of :class:`WindowApi` (and of its controller protocols) that ``window`` lacks."""
    missing = [name for name in protocol_members(WindowApi) if not hasattr(window, name)]
    for attribute, protocol in (("projects", ProjectsApi), ("results", ResultsApi), ("curation", CurationApi),
                                ("runs", RunsApi), ("hooks", HooksApi)):
        part = getattr(window, attribute, None)
        missing += [f"{attribute}.{name}" for name in protocol_members(protocol) if not hasattr(part, name)]
    return missing


def protocol_members(protocol: type) -> list[str]:
    """Names a protocol declares itself and inherits: annotated attributes and methods."""
    names: set[str] = set()
    for part in protocol.__mro__:
        if part is object or part is Protocol or part.__module__ == "typing":
            continue
        names |= set(vars(part).get("__annotations__", {}))
        names |= {name for name, value in vars(part).items() if callable(value) and not name.startswith("_")}
    return sorted(names)


__all__ = ["CurationApi", "HooksApi", "ProjectsApi", "ResultsApi", "RunsApi", "WindowApi", "missing_members",
           "protocol_members"]
