"""The main window: project browser, tile viewer, properties, layers, display, run panel and job dock.

The window is the composition root.  It makes the widgets, lays them out (:mod:`app.gui.window_layout`),
builds the menus (:mod:`app.gui.window_actions`) and hands the work to controllers: projects
(:mod:`app.gui.project_controller`), results in the viewer (:mod:`app.gui.results_controller`),
curation (:mod:`app.gui.curation_controller`), runs and pyramid jobs (:mod:`app.gui.run_controller`),
dialogs (:mod:`app.gui.dialog_actions`), status bar, screenshots and readiness
(:mod:`app.gui.window_hooks`).  What is shown (project, image, run, selection) lives in a Qt-free
:class:`app.core.session.Session` that the widgets observe.  Errors are shown in the window with a
details log; closing with jobs running asks first.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QUndoGroup
from PySide6.QtWidgets import QDockWidget, QMainWindow, QMessageBox

from app.core.errors import UserError
from app.core.session import Session
from app.core.settings import Settings, save_settings
from app.gui.channel_panel import ChannelPanel
from app.gui.curation_controller import CurationController
from app.gui.dialog_actions import DialogActions
from app.gui.job_notice import JobNotice
from app.gui.job_queue import JobQueue
from app.gui.job_queue_widget import JobQueueWidget
from app.gui.layers_panel import LayersPanel
from app.gui.loop_controller import LoopController
from app.gui.project_browser import ProjectBrowser
from app.gui.project_controller import ProjectController
from app.gui.properties_panel import PropertiesPanel
from app.gui.results_controller import ResultsController
from app.gui.run_controller import RunController
from app.gui.run_panel import RunPanel
from app.gui.shape_controller import ShapeController
from app.gui.tile_viewer import TileViewer
from app.gui.window_actions import build_menus
from app.gui.window_hooks import WindowHooks
from app.gui.window_layout import build_docks, build_status_bar, restore_window, window_state

log = logging.getLogger(__name__)

DEVICE_DETECT_DELAY_MS = 3000
TITLE = "Stagescope"


class MainWindow(QMainWindow):
    """Stagescope's main window."""

    def __init__(self, settings: Settings | None = None, save_settings_on_close: bool = True,
                 detect_device: bool = True) -> None:
        super().__init__()
        self.settings = settings or Settings()
        self.save_settings_on_close = save_settings_on_close
        self.session = Session()
        self.session.observe(self._session_changed)
        self.errors: list[tuple[str, str, str]] = []  # (title, message, details) shown to the user
        self._message_boxes: list[QMessageBox] = []
        self.undo_group = QUndoGroup(self)
        self.setWindowTitle(TITLE)

        self.queue = JobQueue(self)
        self.viewer = TileViewer()
        self.browser = ProjectBrowser()
        self.properties = PropertiesPanel()
        self.layers_panel = LayersPanel(self.viewer.overlays)
        self.channel_panel = ChannelPanel(self.viewer)
        self.run_panel = RunPanel(self.settings)
        self.jobs_widget = JobQueueWidget(self.queue)
        self.job_notice = JobNotice(self.queue, self)  # a long job's end: tray notice or status bar + alert

        self.projects = ProjectController(self)
        self.results = ResultsController(self)
        self.curation = CurationController(self)
        self.shapes = ShapeController(self)
        self.loop = LoopController(self)
        self.runs = RunController(self)
        self.dialogs = DialogActions(self)
        self.hooks = WindowHooks(self)

        self.docks: dict[str, QDockWidget] = build_docks(self, self.viewer, {
            "project": self.browser, "layers": self.layers_panel, "properties": self.properties,
            "display": self.channel_panel, "run": self.run_panel, "jobs": self.jobs_widget})
        self.coords_label, self.value_label, self.device_label = build_status_bar(self)
        self.actions: dict[str, QAction] = {}
        build_menus(self)
        self._connect()
        restore_window(self, self.settings.window)
        if detect_device:  # importing torch takes seconds and the GIL: after the first picture, not before
            QTimer.singleShot(DEVICE_DETECT_DELAY_MS, self.detect_device)

    def _connect(self) -> None:
        browser, viewer, properties = self.browser, self.viewer, self.properties
        browser.image_selected.connect(self.open_image)
        browser.run_selected.connect(self.results.select_run)
        browser.run_image_selected.connect(self.results.select_run_image)
        browser.report_activated.connect(self.dialogs.open_path)
        browser.files_dropped.connect(lambda files: self.add_images(files, "link"))
        browser.remove_image_requested.connect(self.projects.remove_image)
        browser.tree.itemSelectionChanged.connect(lambda: self.runs.selection_timer.start(0))
        viewer.needs_pyramid.connect(self.runs.build_pyramid_for)
        viewer.load_failed.connect(lambda message, details: self.show_error("Cannot show the image", message, details))
        viewer.mouse_moved.connect(self.hooks.mouse_moved)
        viewer.clicked.connect(self.curation.clicked)
        viewer.image_opened.connect(lambda name: self.statusBar().showMessage(
            f"{name}: first picture in {1000 * (viewer.first_picture_s or 0):.0f} ms", 4000))
        viewer.overlays.selection_changed.connect(lambda selection: setattr(self.session, "selection", selection))
        self.run_panel.run_requested.connect(self.runs.submit_run)
        self.queue.failed.connect(self._job_failed)
        self.queue.succeeded.connect(lambda r: self.statusBar().showMessage(f"Finished: {r.title}", 5000))
        properties.restage_requested.connect(self.restage)
        properties.exclude_requested.connect(self.curation.set_excluded)
        properties.retype_requested.connect(self.retype)
        properties.delete_requested.connect(self.delete_cell)
        properties.add_mode_toggled.connect(self.set_add_mode)
        properties.draw_mode_toggled.connect(self.shapes.set_draw_mode)
        properties.train_requested.connect(self.loop.train_on_corrections)

    def _session_changed(self, name: str, value: Any) -> None:
        if name == "project":
            self.setWindowTitle(f"{TITLE} - {value.name}" if value is not None else TITLE)

    # ================================================================== session state

    @property
    def project(self) -> Any:
        """The open project, or None."""
        return self.session.project

    @project.setter
    def project(self, project: Any) -> None:
        self.session.project = project

    @property
    def current_image(self) -> str | None:
        """The name of the image on screen, or None."""
        return self.session.image

    @current_image.setter
    def current_image(self, name: str | None) -> None:
        self.session.image = name

    @property
    def current_run(self) -> Any:
        """The run whose results are shown, or None."""
        return self.session.run

    @current_run.setter
    def current_run(self, run: Any) -> None:
        self.session.run = run

    # ================================================================== messages

    def show_error(self, title: str, message: str, details: str = "") -> QMessageBox:
        """Show an error in the window (non-blocking) with a details section; also logged."""
        log.error("%s: %s", title, message)
        self.errors.append((title, message, details))
        box = QMessageBox(QMessageBox.Icon.Critical, title, message, QMessageBox.StandardButton.Ok, self)
        if details:
            box.setDetailedText(details)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(lambda _r, b=box: self._message_boxes.remove(b) if b in self._message_boxes else None)
        self._message_boxes.append(box)
        box.open()
        return box

    def _job_failed(self, record: Any) -> None:
        """A job failed, or a run ended with images that failed: say which and why, in the box itself."""
        if not record.problems:
            self.show_error(f"Job failed: {record.title}", record.message, record.details)
            return
        lines = [f"{item}: {why}" for item, why in record.problems.items()]
        shown = lines[:12] + ([f"... and {len(lines) - 12} more"] if len(lines) > 12 else [])
        what = "failed" if record.status == "failed" else "partly failed"
        self.show_error(f"Run {what}: {record.title}",
                        f"{len(lines)} image(s) failed:\n" + "\n".join(shown), "\n".join(lines))

    def guard(self, title: str, function: Any, *args: Any) -> Any:
        """Run ``function``; a failure is shown in the window instead of escaping to the terminal."""
        try:
            return function(*args)
        except (UserError, ValueError, OSError) as error:
            self.show_error(title, str(error))
        except Exception as error:  # noqa: BLE001
            import traceback

            self.show_error(title, f"{type(error).__name__}: {error}", traceback.format_exc())
        return None

    def confirm(self, title: str, text: str) -> bool:
        """Ask a yes/no question (tests replace this)."""
        answer = QMessageBox.question(self, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    # ================================================================== public hooks (menus, start-up, tests)

    def open_project(self, folder: str | Path, image: str | None = None) -> bool:
        """Open a project folder; shows ``image`` (or the newest image with results, or the first)."""
        return self.projects.open_project(folder, image)

    def new_project(self, folder: str | Path) -> bool:
        """Create a project in ``folder`` and open it."""
        return self.projects.new_project(folder)

    def add_images(self, paths: list[Path], mode: str = "link", group: str | None = None) -> list[str]:
        """Add files (folders: their images) to the project."""
        return self.projects.add_images(paths, mode, group)

    def open_image(self, name: str | None) -> None:
        """Show an image of the project with the results of the best run for it."""
        self.results.open_image(name)

    def step_image(self, step: int) -> None:
        """Show the next (or previous) image of the project."""
        self.results.step_image(step)

    def run_pipeline(self, all_images: bool = False) -> None:
        """Queue the Run panel's pipeline on the selected images (or all)."""
        self.runs.run_pipeline(all_images)

    def select_object(self, layer: str, object_id: Any) -> bool:
        """Select an object by layer and id; False when it is not shown."""
        return self.curation.select_object(layer, object_id)

    def toggle_exclude(self) -> None:
        """Exclude the selected tubule from counts, or include it again."""
        self.curation.toggle_exclude()

    def restage(self, stage: str) -> None:
        """Set the selected tubule's stage."""
        self.curation.restage(stage)

    def retype(self, cell_type: str) -> None:
        """Set the selected cell's type."""
        self.curation.retype(cell_type)

    def delete_cell(self) -> None:
        """Remove the selected cell."""
        self.curation.delete_cell()

    def set_add_mode(self, on: bool) -> None:
        """Turn "add cells by clicking" on or off."""
        self.curation.set_add_mode(on)

    def export_report_dialog(self) -> None:
        """Open the report exporter on the project."""
        self.dialogs.export_report()

    def detect_device(self) -> None:
        """Detect the settings' device on a reader thread; the status bar shows it."""
        self.hooks.detect_device()

    def save_screenshot(self, path: Path) -> Path:
        """Save a PNG of the whole window."""
        return self.hooks.save_screenshot(path)

    def is_ready(self) -> bool:
        """Whether the current image, its detail and its overlays are drawn and no job is pending."""
        return self.hooks.is_ready()

    def wait_until_ready(self, timeout_s: float = 60.0) -> bool:
        """Process events until :meth:`is_ready` (for screenshots and tests); False on timeout."""
        return self.hooks.wait_until_ready(timeout_s)

    # ================================================================== settings, closing

    def save_settings(self) -> None:
        """Save the settings with the window's geometry and dock state."""
        self.settings.window = window_state(self)
        try:
            save_settings(self.settings)
        except OSError as error:
            log.warning("cannot save settings: %s", error)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt's name
        if self.queue.is_busy():
            n = self.queue.active_count()
            if not self.confirm("Jobs are running", f"{n} job(s) are running or queued. Cancel them and quit?"):
                event.ignore()
                return
            self.queue.shutdown()
        if self.save_settings_on_close:
            self.save_settings()
        self.viewer.shutdown()
        self.browser.shutdown()
        self.results.runner.shutdown()
        self.hooks.shutdown()
        event.accept()
