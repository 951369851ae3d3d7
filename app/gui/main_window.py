"""The main window: project browser, tile viewer, properties, layers, display, run panel and job dock.

It wires the parts together and owns the actions (every one in a menu, with a shortcut).  Long
work goes to the job queue (worker threads); reads go to background runners; errors are shown in
the window with a details log; closing with jobs running asks first.  Results shown in the viewer
are always read from the run folder (objects JSON + edits.json), never kept only in memory.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSize, Qt, QTimer, QUrl
from PySide6.QtGui import QAction, QCloseEvent, QDesktopServices, QKeySequence, QUndoGroup
from PySide6.QtWidgets import (
    QApplication, QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox, QWidget,
)

from app import __version__
from app.core.edits import apply_edits, make_edit, next_object_id
from app.core.errors import UserError
from app.core.formats import is_image_path, split_scene
from app.core.images import list_images
from app.core.pyramid import build_pyramid, pyramid_cache_dir
from app.core.readers import preload as preload_readers
from app.core.results import read_objects
from app.core.settings import Settings, save_settings
from app.gui.curation import (
    CurationSession, base_objects_file, latest_run_with_results, objects_file, seed_edits, stack_file,
)
from app.gui.image_tools import ImageTools
from app.gui.job_notice import JobNotice
from app.gui.job_queue import JobQueue, JobQueueWidget
from app.gui.overlays import generated_objects_rgba, outline_objects_from_stack, prepare_document, prepare_layer
from app.gui.project_browser import IMAGE_SUFFIXES, ProjectBrowser
from app.gui.properties_panel import PropertiesPanel
from app.gui.run_panel import (
    RunPanel, RunRequest, batch_adapter, cluster_batch_job, params_with_threads, run_outcome, with_threads,
)
from app.gui.tile_viewer import ChannelPanel, TileViewer
from app.gui.workers import BackgroundRunner, freeze_gc_heap

log = logging.getLogger(__name__)

DEFAULT_CELL_SIZE = 12.0
DEVICE_DETECT_DELAY_MS = 3000
BACKGROUND_EDIT_OBJECTS = 5000  # layers this big are redrawn after an edit on a reader thread


def _load_results_task(path: Path, edits: list[dict], image: str, stack: Path | None = None) -> dict[str, Any]:
    """Reader thread: read an objects file, apply the edits and prepare the drawing arrays."""
    doc = read_objects(path)
    generated = None
    if stack is not None:
        import numpy as np

        with np.load(stack) as data:
            arrays = {key: data[key] for key in data.files}
        generated = generated_objects_rgba(arrays)
        outline_objects_from_stack(doc, arrays)  # Kaizen: outlines of the whole objects, not boxes
    applied = apply_edits(doc, edits)
    return {"doc": doc, "applied": applied, "prepared": prepare_document(applied), "path": path, "image": image,
            "generated": generated}


def _apply_edits_task(doc: dict, edits: list[dict], layer: str, key: Any) -> dict[str, Any]:
    """Reader thread: a layer with the edits applied, prepared for drawing."""
    objects = apply_edits(doc, edits)["layers"].get(layer, [])
    return {"layer": layer, "objects": objects, "prepared": prepare_layer(layer, objects), "key": key}


def _detect_device(choice: str) -> str:
    """Reader thread: the device a job would use, as text for the status bar."""
    if choice == "cpu":
        return "CPU"
    from app.core.torch_preload import preload_torch_libraries

    preload_torch_libraries()  # the loader's ~0.5 s without the GIL: the window keeps drawing (bench/torch_import_stall.py)
    try:
        import torch
    except ImportError:
        return "CPU (no torch)"
    if choice in ("auto", "cuda") or choice.startswith("cuda"):
        if torch.cuda.is_available():
            index = int(choice.split(":")[1]) if ":" in choice else 0
            return f"GPU: {torch.cuda.get_device_name(index)}"
    if choice in ("auto", "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "GPU: Apple MPS"
    return "CPU"


class MainWindow(QMainWindow):
    """Stagescope's main window."""

    def __init__(self, settings: Settings | None = None, save_settings_on_close: bool = True,
                 detect_device: bool = True) -> None:
        super().__init__()
        self.settings = settings or Settings()
        self.save_settings_on_close = save_settings_on_close
        self.project: Any = None
        self.current_image: str | None = None
        self.current_run: Any = None
        self.errors: list[tuple[str, str, str]] = []  # (title, message, details) shown to the user
        self._message_boxes: list[QMessageBox] = []
        self._doc: dict[str, Any] | None = None  # results of the current image, before edits
        self._doc_key: tuple[str, str] | None = None  # (run folder, image)
        self._results_pending = False
        self._pyramid_jobs: set[str] = set()
        self._facts: dict[Any, Any] = {}  # (image, project metadata) -> suitability.ImageFacts or the read error
        self.sessions: dict[Path, CurationSession] = {}
        self.undo_group = QUndoGroup(self)
        self.add_mode = False

        self.setWindowTitle("Stagescope")
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)
        self.queue = JobQueue(self)
        self.viewer = TileViewer()
        self.setCentralWidget(self.viewer)
        self.browser = ProjectBrowser()
        self.properties = PropertiesPanel()
        from app.gui.overlays import LayersPanel

        self.layers_panel = LayersPanel(self.viewer.overlays)
        self.channel_panel = ChannelPanel(self.viewer)
        self.run_panel = RunPanel(self.settings)
        self.jobs_widget = JobQueueWidget(self.queue)
        self.job_notice = JobNotice(self.queue, self)  # a long job's end: tray notice or status bar + alert
        self.results_runner = BackgroundRunner(self, "stagescope-results")
        self.results_runner.done.connect(self._results_done, Qt.ConnectionType.QueuedConnection)
        self.results_runner.error.connect(self._results_error, Qt.ConnectionType.QueuedConnection)

        self.docks: dict[str, QDockWidget] = {}
        self._add_dock("project", "Project", self.browser, Qt.DockWidgetArea.LeftDockWidgetArea)
        self._add_dock("layers", "Layers", self.layers_panel, Qt.DockWidgetArea.RightDockWidgetArea)
        self._add_dock("properties", "Properties", self.properties, Qt.DockWidgetArea.RightDockWidgetArea)
        self._add_dock("display", "Display", self.channel_panel, Qt.DockWidgetArea.RightDockWidgetArea)
        self._add_dock("run", "Run", self.run_panel, Qt.DockWidgetArea.LeftDockWidgetArea)
        self._add_dock("jobs", "Jobs", self.jobs_widget, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.tabifyDockWidget(self.docks["properties"], self.docks["display"])
        self.docks["properties"].raise_()
        self.resizeDocks([self.docks["project"]], [330], Qt.Orientation.Horizontal)
        self.resizeDocks([self.docks["layers"]], [330], Qt.Orientation.Horizontal)
        self.resizeDocks([self.docks["jobs"]], [120], Qt.Orientation.Vertical)
        self.resizeDocks([self.docks["project"], self.docks["run"]], [300, 520], Qt.Orientation.Vertical)
        self.resizeDocks([self.docks["layers"], self.docks["properties"]], [380, 420], Qt.Orientation.Vertical)

        self.coords_label = QLabel("")
        self.value_label = QLabel("")
        self.device_label = QLabel("Device: ...")
        self.statusBar().addWidget(self.coords_label)
        self.statusBar().addWidget(self.value_label, 1)
        self.statusBar().addPermanentWidget(self.device_label)

        self.actions: dict[str, QAction] = {}
        self._build_menus()
        self._connect()
        self._restore_window()
        self.device_runner = BackgroundRunner(self, "stagescope-device")
        self.device_runner.done.connect(self._device_done, Qt.ConnectionType.QueuedConnection)
        if detect_device:  # importing torch takes seconds and the GIL: after the first picture, not before
            QTimer.singleShot(DEVICE_DETECT_DELAY_MS, self.detect_device)

    # ================================================================== construction

    def _add_dock(self, key: str, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> None:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock-{key}")
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        self.docks[key] = dock

    def _action(self, key: str, text: str, slot: Any, shortcut: Any = None, tip: str = "",
                checkable: bool = False) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            shortcuts = shortcut if isinstance(shortcut, list) else [shortcut]
            action.setShortcuts([QKeySequence(s) for s in shortcuts])
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        action.setCheckable(checkable)
        action.triggered.connect(slot)
        self.addAction(action)
        self.actions[key] = action
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        K = QKeySequence.StandardKey
        file = bar.addMenu("&File")
        file.addAction(self._action("new_project", "&New project...", self.new_project_dialog, "Ctrl+Shift+N",
                                    "Create an empty project folder"))
        file.addAction(self._action("open_project", "&Open project...", self.open_project_dialog, K.Open,
                                    "Open a project folder"))
        self.recent_menu = file.addMenu("Open &recent")
        self._update_recent_menu()
        file.addSeparator()
        file.addAction(self._action("add_images", "&Add images (link)...", lambda: self.add_images_dialog("link"),
                                    "Ctrl+I", "Add image files; the raw files stay where they are"))
        file.addAction(self._action("add_images_copy", "Add images (&copy into project)...",
                                    lambda: self.add_images_dialog("copy"), "Ctrl+Shift+I",
                                    "Copy image files into the project folder"))
        file.addAction(self._action("remove_image", "&Remove image from project...", self.remove_current_image,
                                    "Ctrl+Shift+Del", "Forget the current image (a linked file is not deleted)"))
        file.addSeparator()
        file.addAction(self._action("export_report", "&Export report...", self.export_report_dialog, "Ctrl+E",
                                    "Write an Excel workbook from runs"))
        file.addAction(self._action("screenshot", "Save &screenshot...", self.save_screenshot_dialog, "Ctrl+Shift+S",
                                    "Save a PNG of the window"))
        file.addAction(self._action("open_folder", "Show project &folder", self.show_project_folder, "Ctrl+Shift+F",
                                    "Open the project folder in the file manager"))
        self.image_tools = ImageTools(self, file.addMenu("&Image"))  # export view, pixel size, relink
        file.addSeparator()
        file.addAction(self._action("settings", "Se&ttings...", self.settings_dialog, "Ctrl+,",
                                    "Device, default models, theme"))
        file.addSeparator()
        file.addAction(self._action("quit", "&Quit", self.close, K.Quit))

        edit = bar.addMenu("&Edit")
        undo = self.undo_group.createUndoAction(self, "&Undo")
        undo.setShortcuts(QKeySequence.StandardKey.Undo)
        redo = self.undo_group.createRedoAction(self, "&Redo")
        redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.actions["undo"], self.actions["redo"] = undo, redo
        edit.addAction(undo)
        edit.addAction(redo)
        edit.addSeparator()
        edit.addAction(self._action("exclude", "E&xclude / include tubule", self.toggle_exclude, "X",
                                    "Mark the selected tubule as excluded from counts (or include it again)"))
        restage = edit.addMenu("Re&stage tubule")
        from app.gui.overlays import CELL_TYPES, STAGES

        for index, stage in enumerate(STAGES):
            restage.addAction(self._action(f"stage_{index}", stage, lambda _=False, s=stage: self.restage(s),
                                           f"Alt+{index + 1}", f"Set the selected tubule's stage to {stage}"))
        retype = edit.addMenu("Re&type cell")
        for index, cell_type in enumerate(CELL_TYPES):
            retype.addAction(self._action(f"type_{index}", cell_type, lambda _=False, t=cell_type: self.retype(t),
                                          f"Ctrl+Alt+{index + 1}", f"Set the selected cell's type to {cell_type}"))
        edit.addAction(self._action("delete_cell", "&Delete cell", self.delete_cell, K.Delete,
                                    "Remove the selected cell"))
        edit.addAction(self._action("add_mode", "&Add cells by clicking", self.set_add_mode, "A",
                                    "While on, clicking the image adds a cell of the type chosen in Properties",
                                    checkable=True))
        edit.addAction(self._action("deselect", "Clear &selection", self.clear_selection, "Esc"))

        view = bar.addMenu("&View")
        view.addAction(self._action("fit", "&Fit image", self.viewer.fit, ["F", "Ctrl+0"]))
        view.addAction(self._action("zoom_in", "Zoom &in", lambda: self.viewer.zoom(1.5), [K.ZoomIn, "+", "="]))
        view.addAction(self._action("zoom_out", "Zoom &out", lambda: self.viewer.zoom(1 / 1.5), [K.ZoomOut, "-"]))
        view.addSeparator()
        view.addAction(self._action("next_image", "&Next image", lambda: self.step_image(1), ["N", "Ctrl+PgDown"]))
        view.addAction(self._action("prev_image", "&Previous image", lambda: self.step_image(-1), ["P", "Ctrl+PgUp"]))
        view.addAction(self._action("next_z", "Next focal plane", lambda: self.viewer.set_z(self.viewer.z + 1), "]"))
        view.addAction(self._action("prev_z", "Previous focal plane",
                                    lambda: self.viewer.set_z(self.viewer.z - 1), "["))
        view.addAction(self._action("toggle_overlays", "Show &overlays", self.toggle_overlays, "O",
                                    checkable=True))
        self.actions["toggle_overlays"].setChecked(True)
        view.addSeparator()
        docks = view.addMenu("&Panels")
        for index, (key, dock) in enumerate(self.docks.items()):
            action = dock.toggleViewAction()
            action.setShortcut(QKeySequence(f"Ctrl+Shift+{index + 1}"))
            docks.addAction(action)
            self.actions[f"dock_{key}"] = action

        analysis = bar.addMenu("&Analysis")
        analysis.addAction(self._action("run_selected", "&Run on selected images", lambda: self.run_pipeline(False),
                                        "Ctrl+R", "Queue the pipeline of the Run panel on the selected images"))
        analysis.addAction(self._action("run_all", "Run on &all images", lambda: self.run_pipeline(True),
                                        "Ctrl+Shift+R", "Queue the pipeline on every image of the project"))
        analysis.addAction(self._action("show_run_panel", "Show run &panel", self.show_run_panel, "Ctrl+Shift+P"))
        analysis.addSeparator()
        analysis.addAction(self._action("cancel_job", "&Cancel selected job", self.jobs_widget.cancel_selected,
                                        "Ctrl+."))
        analysis.addAction(self._action("cancel_all", "Cancel all &jobs", self.queue.cancel_all, "Ctrl+Shift+."))
        analysis.addAction(self._action("job_details", "Job &details...",
                                        lambda: self.jobs_widget.show_details(self.jobs_widget.selected()), "Ctrl+J"))
        analysis.addSeparator()
        analysis.addAction(self._action("build_pyramid", "Build &overview levels of this image",
                                        self.build_pyramid_for_current, "Ctrl+B",
                                        "Cache downsampled levels of a big image in the project"))
        analysis.addAction(self._action("reload", "Re&load project", self.reload_project, K.Refresh))

        models = bar.addMenu("&Models")
        models.addAction(self._action("model_library", "Model &library...", self.model_library_dialog, "Ctrl+L",
                                      "Shipped and user models with their cards; import and export"))
        models.addAction(self._action("train", "&Train a model...", self.training_wizard, "Ctrl+T",
                                      "Train on annotated or corrected images"))

        help_menu = bar.addMenu("&Help")
        help_menu.addAction(self._action("shortcuts", "&Keyboard shortcuts", self.show_shortcuts, K.HelpContents))
        help_menu.addAction(self._action("about", "&About Stagescope", self.show_about, "Shift+F1"))

    def _connect(self) -> None:
        self.browser.image_selected.connect(self.open_image)
        self.browser.run_selected.connect(self.select_run)
        self.browser.run_image_selected.connect(self.select_run_image)
        self.browser.report_activated.connect(self.open_path)
        self.browser.files_dropped.connect(lambda files: self.add_images(files, "link"))
        self.browser.remove_image_requested.connect(self.remove_image)
        self._selection_timer = QTimer(self)  # many selection signals (a refresh, a Shift+click) -> one update
        self._selection_timer.setSingleShot(True)
        self._selection_timer.timeout.connect(self._selection_changed)
        self.browser.tree.itemSelectionChanged.connect(lambda: self._selection_timer.start(0))
        self.viewer.needs_pyramid.connect(self.build_pyramid_for)
        self.viewer.load_failed.connect(
            lambda message, details: self.show_error("Cannot show the image", message, details))
        self.viewer.mouse_moved.connect(self._mouse_moved)
        self.viewer.clicked.connect(self._clicked)
        self.viewer.image_opened.connect(lambda name: self.statusBar().showMessage(
            f"{name}: first picture in {1000 * (self.viewer.first_picture_s or 0):.0f} ms", 4000))
        self.run_panel.run_requested.connect(self._submit_run)
        self.queue.failed.connect(self._job_failed)
        self.queue.succeeded.connect(lambda r: self.statusBar().showMessage(f"Finished: {r.title}", 5000))
        self.properties.restage_requested.connect(self.restage)
        self.properties.exclude_requested.connect(self.set_excluded)
        self.properties.retype_requested.connect(self.retype)
        self.properties.delete_requested.connect(self.delete_cell)
        self.properties.add_mode_toggled.connect(self.set_add_mode)

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

    def _guard(self, title: str, function: Any, *args: Any) -> Any:
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

    # ================================================================== projects

    def open_project(self, folder: str | Path, image: str | None = None) -> bool:
        """Open a project folder; shows ``image`` (or the newest image with results, or the first)."""
        from app.core.project import Project

        project = self._guard("Cannot open the project", Project.open, folder)
        if project is None:
            return False
        self._facts.clear()
        self._set_project(project)
        self.settings.add_recent_project(project.folder)
        self.settings.remember_folder("project", project.folder.parent)
        self._update_recent_menu()
        names = [e.name for e in project.images()]
        if image is not None and image not in names:
            self.show_error("No such image", f"project {project.name!r} has no image named {image!r}; "
                            f"images: {', '.join(names[:10]) or 'none'}")
            image = None
        self.open_image(image or self.default_image())
        return True

    def _set_project(self, project: Any) -> None:
        self.project = project
        self.current_run = None
        self.current_image = None
        self._doc = self._doc_key = None
        self.viewer.close_image()
        self.browser.set_project(project)
        if project is not None:  # bioio-ome-zarr's import alone takes seconds: not on the first picture's time
            paths = [e.path for e in project.images()]
            self._preload = threading.Thread(target=preload_readers, args=(paths,), daemon=True, name="preload-readers")
            self._preload.start()
        self.setWindowTitle(f"Stagescope - {project.name}" if project else "Stagescope")
        self.properties.show_info(f"Project {project.name}", {"folder": str(project.folder),
                                                              "images": len(project.images()),
                                                              "runs": len(project.runs())})

    def default_image(self) -> str | None:
        """The image to show first: the newest one with results, else the first image."""
        if self.project is None:
            return None
        images = [e.name for e in self.project.images()]
        for run in reversed(self.project.runs()):
            for name in run.results:
                if name in images and objects_file(run, name) is not None:
                    return name
        return images[0] if images else None

    def reload_project(self) -> None:
        """Re-read the project from disk (runs written by a batch outside the app appear)."""
        if self.project is None:
            return
        from app.core.project import Project

        project = self._guard("Cannot reload the project", Project.open, self.project.folder)
        if project is not None:
            self.project = project
            self.browser.set_project(project)
            if self.current_image:
                self.browser.select_image(self.current_image, emit=False)

    def new_project_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "New project: choose an empty folder",
                                                  self.settings.last_folder("project"))
        if folder:
            self.new_project(folder)

    def new_project(self, folder: str | Path) -> bool:
        from app.core.project import Project

        project = self._guard("Cannot create the project", Project.create, folder)
        if project is None:
            return False
        return self.open_project(project.folder)

    def open_project_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open project folder", self.settings.last_folder("project"))
        if folder:
            self.open_project(folder)

    def _update_recent_menu(self) -> None:
        self.recent_menu.clear()
        for index, folder in enumerate(self.settings.recent_projects):
            action = self.recent_menu.addAction(f"&{index + 1} {folder}", lambda f=folder: self.open_project(f))
            if index < 9:
                action.setShortcut(QKeySequence(f"Ctrl+Alt+Shift+{index + 1}"))
        self.recent_menu.setEnabled(bool(self.settings.recent_projects))

    def add_images_dialog(self, mode: str = "link") -> None:
        if not self._need_project():
            return
        patterns = " ".join(f"*{s}" for s in IMAGE_SUFFIXES)
        files, _ = QFileDialog.getOpenFileNames(self, "Add images", self.settings.last_folder("images"),
                                                f"Images ({patterns});;All files (*)")
        if files:
            self.settings.remember_folder("images", files[0])
            self.add_images([Path(f) for f in files], mode)

    def add_images(self, paths: list[Path], mode: str = "link", group: str | None = None) -> list[str]:
        """Add files (folders: their images) to the project; problems are listed in one message."""
        if not self._need_project():
            return []
        added, problems = [], []
        files: list[Path] = []
        for path in paths:
            path = Path(path)
            try:
                files += list_images(path)  # folders: their images; multi-scene files: each scene
            except UserError as error:
                problems.append(str(error))
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            for path in files:
                try:
                    added.append(self.project.add_image(path, mode=mode, group=group).name)
                except UserError as error:
                    problems.append(f"{path.name}: {error}")
        finally:
            QApplication.restoreOverrideCursor()
        self.browser.refresh()
        if problems:
            self.show_error("Some images were not added",
                            f"{len(problems)} of {len(files)} file(s) could not be added.",
                            "\n".join(problems))
        if added:
            self.statusBar().showMessage(f"Added {len(added)} image(s)", 5000)
            if self.current_image is None:
                self.open_image(added[0])
        return added

    def remove_current_image(self) -> None:
        if self.current_image:
            self.remove_image(self.current_image)

    def remove_image(self, name: str) -> None:
        if self.project is None or not self.confirm(
                "Remove image", f"Remove {name!r} from the project? A linked file stays where it is; "
                                "a copy inside the project is deleted. Results of runs are kept."):
            return
        if self._guard("Cannot remove the image", self.project.remove_image, name) is None and \
                name in [e.name for e in self.project.images()]:
            return
        if name == self.current_image:
            self.viewer.close_image()
            self.current_image = None
        self.browser.refresh()

    def _need_project(self) -> bool:
        if self.project is None:
            self.show_error("No project", "Open or create a project first (File menu).")
            return False
        return True

    # ================================================================== images and results

    def open_image(self, name: str | None) -> None:
        """Show an image of the project with the results of the best run for it."""
        if self.project is None or name is None:
            return
        try:
            path = self.project.image_path(name)
            entry = self.project.image(name)
        except UserError as error:
            self.show_error("Cannot open the image", str(error))
            return
        if not path.is_file() and not is_image_path(split_scene(path)[0]):  # a scene, an OME-Zarr folder
            box = self.show_error("Image file missing", f"image {name!r}: {path} not found (moved or deleted?)")
            self.image_tools.offer_locate(box, name)  # "Locate file...": relinks the other moved files too
            return
        self.current_image = name
        self.browser.select_image(name, emit=False)
        self.viewer.open_image(name, path, pyramid_cache_dir(self.project.folder, name))
        self.clear_selection()
        self._selection_timer.start(0)  # after the first picture is on its way
        self.properties.show_info(f"Image {name}", {"file": str(path), "mode": entry.mode,
                                                    "channels": ", ".join(entry.channels) or "?",
                                                    "pixel size (µm)": entry.pixel_size_um or "unknown",
                                                    "group": entry.group or ""})
        run = self.current_run if self.current_run is not None and name in self.current_run.results \
            and objects_file(self.current_run, name) is not None else latest_run_with_results(self.project, name)
        self.show_results(run, name)

    def step_image(self, step: int) -> None:
        """Show the next (or previous) image of the project."""
        if self.project is None:
            return
        names = [e.name for e in self.project.images()]
        if not names:
            return
        index = names.index(self.current_image) if self.current_image in names else -step
        self.open_image(names[(index + step) % len(names)])

    def select_run(self, run_id: str) -> None:
        """Show a run's results: on the current image if the run has it, else on its first image."""
        run = self._guard("Cannot read the run", self.project.get_run, run_id)
        if run is None:
            return
        self.current_run = run
        if self.current_image in run.results:
            self.show_results(run, self.current_image)
        elif run.results:
            self.open_image(next(iter(run.results)))
        else:
            self.statusBar().showMessage(f"Run {run_id} has no finished images yet", 5000)

    def select_run_image(self, run_id: str, image: str) -> None:
        run = self._guard("Cannot read the run", self.project.get_run, run_id)
        if run is None:
            return
        self.current_run = run
        if image != self.current_image:
            self.open_image(image)
        else:
            self.show_results(run, image)

    def show_results(self, run: Any, image: str) -> None:
        """Load a run's objects for an image (in the background) and draw them as overlays."""
        self.current_run = run
        if run is not None:
            self.run_panel.suggest_pipeline(run.pipeline)  # the panel shows what made these results
        path = base_objects_file(run, image) if run is not None else None
        if path is None:
            self._doc = self._doc_key = None
            self.viewer.overlays.clear()
            self.undo_group.setActiveStack(None)
            self.properties.set_curation_enabled(False, "Run a pipeline to get results to curate")
            return
        session = self.session_for(run.folder)
        if not session.edits:
            session.seed(seed_edits(run, image))
        self.undo_group.setActiveStack(session.stack)
        self._doc_key = (str(run.folder), image)
        self._results_pending = True
        self.results_runner.submit("results", _load_results_task, path, list(session.edits), image,
                                   stack_file(run, image))
        self.browser.select_run(run.id)
        self.browser.select_image(image, emit=False)

    def _results_done(self, key: Any, result: dict[str, Any]) -> None:
        self._results_pending = False
        if key == "edit":
            if result["key"] == self._doc_key:
                self._layer_edited(result["layer"], result["objects"], result["prepared"])
            return
        if self._doc_key is None or result["image"] != self.current_image:
            return
        self._doc = result["doc"]
        self.viewer.overlays.clear_image_layers()
        self.viewer.overlays.set_document(result["applied"], result["prepared"])
        if result.get("generated") is not None:
            self.viewer.overlays.set_image_layer("generated objects", *result["generated"])
        self.properties.set_curation_enabled("cells" in result["applied"].get("layers", {}),
                                             "These results have no cells layer")
        count = self.viewer.overlays.object_count()
        self.statusBar().showMessage(f"{self.current_image}: {count} objects from run {self.current_run.id}", 5000)

    def _results_error(self, _key: Any, message: str, details: str) -> None:
        self._results_pending = False
        self.show_error("Cannot show the results", message, details)

    def session_for(self, run_folder: Path) -> CurationSession:
        """The curation session (edits + undo stack) of a run folder, created on first use."""
        run_folder = Path(run_folder)
        if run_folder not in self.sessions:
            session = CurationSession(run_folder, self)
            session.changed.connect(self._edits_changed)
            self.undo_group.addStack(session.stack)
            self.sessions[run_folder] = session
        return self.sessions[run_folder]

    def current_session(self) -> CurationSession | None:
        if self.current_run is None or self._doc is None:
            return None
        return self.session_for(self.current_run.folder)

    def _edits_changed(self, image: str, layer: str) -> None:
        session = self.sender()
        if self._doc is None or self.current_run is None or image not in ("", self.current_image):
            return
        if session is not self.sessions.get(Path(self.current_run.folder)):
            return
        size = len(self._doc.get("layers", {}).get(layer, []))
        if size >= BACKGROUND_EDIT_OBJECTS:  # big layers are redrawn from a reader thread: no stall
            self._results_pending = True
            self.results_runner.submit("edit", _apply_edits_task, self._doc, list(session.edits), layer,
                                       self._doc_key)
            return
        applied = apply_edits(self._doc, session.edits)
        self._layer_edited(layer, applied["layers"].get(layer, []), None)

    def _layer_edited(self, layer: str, objects: list[dict[str, Any]], prepared: Any) -> None:
        self.viewer.overlays.update_layer(layer, objects, prepared)
        selected = self.viewer.overlays.selected
        if selected is not None:
            self._show_selected(*selected)
        else:
            self.properties.show_object(None, None)

    # ================================================================== selection and curation

    def _clicked(self, x: float, y: float, _modifiers: Any) -> None:
        if self.add_mode:
            self.add_cell_at(x, y)
            return
        hit = self.viewer.overlays.hit_test(x, y, self.viewer.screen_tolerance(2))
        self.viewer.overlays.select(hit)
        if hit is None:
            self.properties.show_object(None, None)
        else:
            self._show_selected(*hit)

    def select_object(self, layer: str, object_id: Any) -> bool:
        """Select an object by layer and id (menus, tests); False when it is not shown."""
        obj = self.viewer.overlays.find(layer, object_id)
        if obj is None:
            return False
        self.viewer.overlays.select((layer, obj))
        self._show_selected(layer, obj)
        return True

    def _show_selected(self, layer: str, obj: dict[str, Any]) -> None:
        extra = {}
        if layer == "tubules":
            cells = self.viewer.overlays.layers.get("cells")
            if cells is not None:
                counts: dict[str, int] = {}
                for cell in cells.data.objects:
                    if cell.get("tubule_id") == obj.get("id"):
                        counts[str(cell.get("class"))] = counts.get(str(cell.get("class")), 0) + 1
                extra["cells"] = counts or "none"
        self.properties.show_object(layer, obj, extra, (self.viewer.overlays.document or {}).get("meta"))

    def clear_selection(self) -> None:
        self.viewer.overlays.select(None)
        self.properties.show_object(None, None)
        if self.add_mode:
            self.set_add_mode(False)

    def _selected(self, layer: str) -> dict[str, Any] | None:
        selected = self.viewer.overlays.selected
        if selected is None or selected[0] != layer:
            self.statusBar().showMessage(f"Select a {layer[:-1]} first (click it in the viewer)", 4000)
            return None
        return selected[1]

    def _push(self, action: str, object_id: Any, value: Any = None, **extra: Any) -> bool:
        session = self.current_session()
        if session is None:
            self.statusBar().showMessage("No results to curate on this image", 4000)
            return False
        edit = make_edit(action, self.current_image, object_id, value, **extra)
        return self._guard("Cannot save the edit", session.push, edit) is not False

    def toggle_exclude(self) -> None:
        tubule = self._selected("tubules")
        if tubule is not None:
            self.set_excluded(not tubule.get("excluded", False))

    def set_excluded(self, excluded: bool) -> None:
        tubule = self._selected("tubules")
        if tubule is not None and bool(tubule.get("excluded")) != bool(excluded):
            self._push("exclude_tubule", tubule["id"], bool(excluded))

    def restage(self, stage: str) -> None:
        tubule = self._selected("tubules")
        if tubule is not None and tubule.get("class") != stage:
            self._push("restage_tubule", tubule["id"], stage)

    def retype(self, cell_type: str) -> None:
        cell = self._selected("cells")
        if cell is not None and cell.get("class") != cell_type:
            self._push("retype_cell", cell["id"], cell_type)

    def delete_cell(self) -> None:
        cell = self._selected("cells")
        if cell is not None:
            self.viewer.overlays.select(None)
            self._push("delete_cell", cell["id"])

    def set_add_mode(self, on: bool) -> None:
        """Turn "add cells by clicking" on or off (menu action, A, and the Properties button agree)."""
        on = bool(on) and self.current_session() is not None and "cells" in (self._doc or {}).get("layers", {})
        self.add_mode = on
        for widget in (self.actions["add_mode"], self.properties.add_button):
            widget.blockSignals(True)
            widget.setChecked(on)
            widget.blockSignals(False)
        self.viewer.graphics.setCursor(Qt.CursorShape.CrossCursor if on else Qt.CursorShape.ArrowCursor)
        if on:
            self.statusBar().showMessage("Click on the image to add a cell; Esc to stop", 5000)

    def add_cell_at(self, x: float, y: float, cell_type: str | None = None) -> None:
        """Add a cell centred at (x, y) with the typical size of this image's cells."""
        session = self.current_session()
        if session is None:
            return
        cell_type = cell_type or self.properties.add_type.currentText()
        layer = self.viewer.overlays.layers.get("cells")
        size = DEFAULT_CELL_SIZE
        if layer is not None and len(layer.data.boxes):
            import numpy as np

            b = layer.data.boxes
            size = float(np.median(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])))
        objects = layer.data.objects if layer is not None else []
        object_id = next_object_id(list(objects) + self._doc.get("layers", {}).get("cells", []), session.edits)
        half = size / 2
        self._push("add_cell", object_id, cell_type, box=[x - half, y - half, x + half, y + half], centroid=[y, x])

    # ================================================================== runs and jobs

    def show_run_panel(self) -> None:
        self.docks["run"].show()
        self.docks["run"].raise_()

    def run_pipeline(self, all_images: bool = False) -> None:
        """Queue the Run panel's pipeline on the selected images (or all)."""
        if self._selection_timer.isActive():  # the panel shows the channels of the images selected just now
            self._selection_timer.stop()
            self._selection_changed()
        self._guard("Cannot start the run", self.run_panel.request_run, all_images)

    def _submit_run(self, request: RunRequest) -> Any:
        if not self._need_project():
            return None
        from app.pipelines import registry

        spec = registry.get(request.pipeline)
        if request.all_images:
            images = [e.name for e in self.project.images()]
        else:
            images = self.browser.selected_images() or ([self.current_image] if self.current_image else [])
        if not images:
            self.show_error("No images", "Select images in the project browser, or run on all images.")
            return None
        reasons = self.refusals(request.pipeline, images, request.params, request.models)
        if reasons:
            more = f" (and {len(reasons) - 1} more image(s))" if len(reasons) > 1 else ""
            self.show_error("Cannot start the run", f"{spec.title}: {reasons[0]}{more}", "\n".join(reasons))
            return None
        threads = int(self.settings.threads)
        project, models = self.project, dict(request.models)
        params = params_with_threads(request.params, threads)
        title = f"{spec.title} on {images[0]}" if len(images) == 1 else f"{spec.title} on {len(images)} images"
        self.save_settings()
        adapter = batch_adapter(request.pipeline, self.settings, project, images)
        if adapter is not None:  # the settings' run queue: a Dask scheduler or a local cluster
            cluster = self.settings.batch_cluster
            return self.queue.submit(f"{title} ({cluster})", lambda: cluster_batch_job(
                project, request.pipeline, adapter, images, params, models, cluster), kind="analyze",
                on_success=self._run_finished, outcome=run_outcome)
        return self.queue.submit(title, lambda: with_threads(threads, lambda: spec.analyze(project, images, params,
                                                                                            models)),
                                 kind="analyze", on_success=self._run_finished, outcome=run_outcome)

    def image_facts(self, name: str) -> Any:
        """What the pipeline rules know of a project image (read once; a read error is kept as its text)."""
        from app.core.project_edit import entry_metadata
        from app.pipelines.suitability import image_facts

        try:
            metadata = entry_metadata(self.project, name)
        except UserError as error:
            return f"cannot be read: {error}"
        key = (name, repr(sorted(metadata.items())))  # read again once the user sets a pixel size or channels
        if key not in self._facts:
            try:
                self._facts[key] = image_facts(name, self.project.image_path(name),
                                               pyramid_cache_dir(self.project.folder, name), metadata)
            except (UserError, OSError, ValueError) as error:
                self._facts[key] = f"cannot be read: {error}"
        return self._facts[key]

    def refusals(self, pipeline: str, images: list[str], params: Any, models: dict[str, str]) -> list[str]:
        """One line per image the pipeline cannot analyse (unreadable, wrong kind): the run is refused."""
        from app.pipelines.suitability import refusals

        facts = [self.image_facts(name) for name in images]
        unreadable = [f"{name}: {item}" for name, item in zip(images, facts) if isinstance(item, str)]
        return unreadable + refusals(pipeline, [f for f in facts if not isinstance(f, str)], params, models)

    def _selection_changed(self) -> None:
        """Tell the run panel which images are selected (their channels, the pipeline that fits them)."""
        if self.project is None:
            return
        names = self.browser.selected_images() or ([self.current_image] if self.current_image else [])
        facts = [self.image_facts(name) for name in names[:50]]
        self.run_panel.set_images([f for f in facts if not isinstance(f, str)])

    def _run_finished(self, result: Any) -> None:
        """A pipeline job ended: list the new run and show its results on the current image."""
        self.browser.refresh()
        if not isinstance(result, (str, Path)) or not (Path(result) / "run.json").is_file():
            return
        from app.core.project import Run

        run = Run.load(result)
        self.current_run = run
        if self.current_image in run.results:
            self.show_results(run, self.current_image)
        elif run.results:
            self.open_image(next(iter(run.results)))

    def build_pyramid_for_current(self) -> None:
        if self.current_image:
            self.build_pyramid_for(self.current_image, force=True)

    def build_pyramid_for(self, name: str, force: bool = False) -> None:
        """Queue building the cached overview levels of a project image (once)."""
        if self.project is None or (name in self._pyramid_jobs and not force):
            return
        path = self.project.image_path(name)
        cache = pyramid_cache_dir(self.project.folder, name)
        self._pyramid_jobs.add(name)

        def done(_result: Any) -> None:
            self._pyramid_jobs.discard(name)
            self.browser.refresh_thumbnail(name)
            if self.current_image == name:
                self.viewer.reopen()

        # a worker thread: with the heap frozen (gc.freeze) it stalls the GUI 10-15 ms on a quiet machine, while
        # a child process stalled it 135-240 ms (bench/gui.py --stall-only, 2026-11-26)
        record = self.queue.submit(f"Overview levels of {name}", lambda: build_pyramid(path, cache),
                                   kind="pyramid",
                                   on_success=done, lane="images")
        self.queue.failed.connect(lambda r: self._pyramid_jobs.discard(name) if r is record else None)

    # ================================================================== dialogs (step 3 parts)

    def export_report_dialog(self) -> None:
        if not self._need_project():
            return
        from app.gui.report_exporter import ReportExporter

        dialog = ReportExporter(self.project, self.settings, self)
        dialog.report_written.connect(lambda _path: self.browser.refresh())
        dialog.open()
        self._report_dialog = dialog

    def model_library_dialog(self) -> None:
        from app.gui.model_library import ModelLibrary

        dialog = ModelLibrary(self.settings, self, image_info=self._current_image_info())
        dialog.models_changed.connect(self.run_panel.refresh_models)
        dialog.open()
        self._model_dialog = dialog

    def training_wizard(self) -> None:
        from app.gui.training_wizard import TrainingWizard

        wizard = TrainingWizard(self.project, self.settings, self.queue, self)
        wizard.model_saved.connect(lambda _folder: self.run_panel.refresh_models())
        wizard.open()
        self._wizard = wizard

    def settings_dialog(self) -> None:
        from app.gui.settings_dialog import SettingsDialog

        dialog = SettingsDialog(self.settings, self)
        dialog.accepted.connect(self._settings_changed)
        dialog.open()
        self._settings_dialog = dialog

    def _settings_changed(self) -> None:
        from app.gui.main import apply_theme

        apply_theme(QApplication.instance(), self.settings.theme)
        self.save_settings()
        self.run_panel.refresh_models()
        self.detect_device()

    def _current_image_info(self) -> dict[str, Any] | None:
        if self.project is None or self.current_image is None:
            return None
        entry = self.project.image(self.current_image)
        n = self.viewer.pyramid.n_channels if self.viewer.pyramid is not None else len(entry.channels) or None
        planes = self.viewer.pyramid.n_planes if self.viewer.pyramid is not None else None
        return {"name": entry.name, "n_channels": n, "n_planes": planes, "channels": entry.channels}

    # ================================================================== misc actions

    def toggle_overlays(self, on: bool) -> None:
        for layer in self.viewer.overlays.layers.values():
            layer.set_visible(on)
        self.layers_panel.refresh()

    def open_path(self, path: Path) -> None:
        """Open a file or folder with the desktop's application."""
        if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(path))):
            self.statusBar().showMessage(f"Cannot open {path}", 5000)

    def show_project_folder(self) -> None:
        if self._need_project():
            self.open_path(self.project.folder)

    def save_screenshot_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save screenshot", str(Path(self.settings.last_folder("reports"))
                                                                            / "stagescope.png"), "PNG (*.png)")
        if path:
            self.save_screenshot(Path(path))

    def save_screenshot(self, path: Path) -> Path:
        """Save a PNG of the whole window."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.grab().save(str(path), "PNG"):
            raise UserError(f"{path}: cannot write the screenshot")
        return path

    def show_shortcuts(self) -> Any:
        from app.gui.shortcuts_dialog import ShortcutsDialog

        dialog = ShortcutsDialog(self.findChildren(QAction), self)
        dialog.open()
        return dialog

    def show_about(self) -> None:
        QMessageBox.about(self, "About Stagescope",
                          f"Stagescope {__version__}\nBrightfield nuclei, testis staging (Stagetool) and Kaizen "
                          "decomposition for microscopy labs.")

    def detect_device(self) -> None:
        self.device_runner.submit("device", _detect_device, self.settings.device)

    def _device_done(self, _key: Any, text: str) -> None:
        self.device_label.setText(f"Device: {text}")
        freeze_gc_heap()  # torch is imported now: keep its objects out of later full collections

    def _mouse_moved(self, x: float, y: float) -> None:
        size = self.viewer.image_size()
        if size is None or not (0 <= x < size[1] and 0 <= y < size[0]):
            self.coords_label.setText("")
            self.value_label.setText("")
            return
        self.coords_label.setText(f"x {int(x)}  y {int(y)}")
        values = self.viewer.pixel_values(x, y)
        if values is not None:
            names = [c.name for c in self.viewer.channels]
            self.value_label.setText("  ".join(f"{n}: {v:.4g}" for n, v in zip(names, values)))

    # ================================================================== readiness, closing

    def is_ready(self) -> bool:
        """Whether the current image, its detail and its overlays are drawn and no job is pending."""
        return (self.viewer.is_idle() and not self._results_pending and not self.results_runner.busy
                and not self.queue.is_busy() and not self.device_runner.busy and not self._selection_timer.isActive()
                and (self.current_image is None or self.viewer.pyramid is not None))

    def wait_until_ready(self, timeout_s: float = 60.0) -> bool:
        """Process events until :meth:`is_ready` (for screenshots and tests); False on timeout."""
        end = time.monotonic() + timeout_s
        settled = 0
        while time.monotonic() < end:
            QApplication.processEvents()
            if self.is_ready():
                settled += 1
                if settled >= 3:
                    return True
            else:
                settled = 0
            time.sleep(0.02)
        return False

    def save_settings(self) -> None:
        self.settings.window = {"geometry": bytes(self.saveGeometry().toBase64()).decode(),
                                "state": bytes(self.saveState().toBase64()).decode()}
        try:
            save_settings(self.settings)
        except OSError as error:
            log.warning("cannot save settings: %s", error)

    def _restore_window(self) -> None:
        geometry, state = self.settings.window.get("geometry"), self.settings.window.get("state")
        if geometry:
            self.restoreGeometry(QByteArray.fromBase64(geometry.encode()))
        else:
            self.resize(QSize(1500, 950))
        if state:
            self.restoreState(QByteArray.fromBase64(state.encode()))

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
        self.results_runner.shutdown()
        self.device_runner.shutdown()
        event.accept()
