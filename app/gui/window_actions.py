"""The window's menus and shortcuts: every action is in a menu, with a shortcut and a status tip."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from PySide6.QtGui import QAction, QKeySequence

from app.gui.image_tools import ImageTools

from app.gui.window_api import WindowApi

if TYPE_CHECKING:  # the controllers, not the window: none of them imports this module
    from app.gui.curation_controller import CurationController
    from app.gui.dialog_actions import DialogActions
    from app.gui.export_actions import ExportActions
    from app.gui.project_controller import ProjectController
    from app.gui.results_controller import ResultsController
    from app.gui.run_controller import RunController
    from app.gui.window_hooks import WindowHooks


class MenuWindow(WindowApi, Protocol):
    """The window as its menus see it: :class:`WindowApi` with the whole controllers, whose slots they call."""

    projects: ProjectController
    results: ResultsController
    curation: CurationController
    runs: RunController
    dialogs: DialogActions
    hooks: WindowHooks
    export_actions: ExportActions


def add_action(window: WindowApi, key: str, text: str, slot: Any, shortcut: Any = None, tip: str = "",
               checkable: bool = False) -> QAction:
    """Make an action of the window, known as ``window.actions[key]``."""
    action = QAction(text, window)
    if shortcut is not None:
        shortcuts = shortcut if isinstance(shortcut, list) else [shortcut]
        action.setShortcuts([QKeySequence(s) for s in shortcuts])
    if tip:
        action.setStatusTip(tip)
        action.setToolTip(tip)
    action.setCheckable(checkable)
    action.triggered.connect(slot)
    window.addAction(action)
    window.actions[key] = action
    return action


def build_menus(w: MenuWindow) -> None:
    """File, Edit, View, Analysis, Models and Help menus of the window."""
    def act(*args: Any, **kwargs: Any) -> QAction:
        return add_action(w, *args, **kwargs)

    bar = w.menuBar()
    K = QKeySequence.StandardKey
    projects, curation, runs, dialogs, hooks = w.projects, w.curation, w.runs, w.dialogs, w.hooks
    file = bar.addMenu("&File")
    file.addAction(act("new_project", "&New project...", projects.new_project_dialog, "Ctrl+Shift+N",
                       "Create an empty project folder"))
    file.addAction(act("open_project", "&Open project...", projects.open_project_dialog, K.Open,
                       "Open a project folder"))
    w.recent_menu = file.addMenu("Open &recent")
    projects.update_recent_menu()
    file.addSeparator()
    file.addAction(act("add_images", "&Add images (link)...", lambda: projects.add_images_dialog("link"),
                       "Ctrl+I", "Add image files; the raw files stay where they are"))
    file.addAction(act("add_images_copy", "Add images (&copy into project)...",
                       lambda: projects.add_images_dialog("copy"), "Ctrl+Shift+I",
                       "Copy image files into the project folder"))
    file.addAction(act("remove_image", "&Remove image from project...", projects.remove_current_image,
                       "Ctrl+Shift+Del", "Forget the current image (a linked file is not deleted)"))
    file.addSeparator()
    file.addAction(act("export_report", "&Export report...", w.export_report_dialog, "Ctrl+E",
                       "Write an Excel workbook from runs"))
    from app.gui.export_actions import ExportActions  # File > Export results for QuPath / napari...

    w.export_actions = ExportActions(w, file)
    file.addAction(act("screenshot", "Save &screenshot...", hooks.save_screenshot_dialog, "Ctrl+Shift+S",
                       "Save a PNG of the window"))
    file.addAction(act("open_folder", "Show project &folder", dialogs.show_project_folder, "Ctrl+Shift+F",
                       "Open the project folder in the file manager"))
    w.image_tools = ImageTools(w, file.addMenu("&Image"))  # export view, pixel size, relink
    file.addSeparator()
    file.addAction(act("settings", "Se&ttings...", dialogs.settings, "Ctrl+,", "Device, default models, theme"))
    file.addSeparator()
    file.addAction(act("quit", "&Quit", w.close, K.Quit))

    edit = bar.addMenu("&Edit")
    undo = w.undo_group.createUndoAction(w, "&Undo")
    undo.setShortcuts(QKeySequence.StandardKey.Undo)
    redo = w.undo_group.createRedoAction(w, "&Redo")
    redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
    w.actions["undo"], w.actions["redo"] = undo, redo
    edit.addAction(undo)
    edit.addAction(redo)
    edit.addSeparator()
    edit.addAction(act("exclude", "E&xclude / include tubule", curation.toggle_exclude, "X",
                       "Mark the selected tubule as excluded from counts (or include it again)"))
    restage = edit.addMenu("Re&stage tubule")
    from app.gui.overlays import CELL_TYPES, STAGES

    for index, stage in enumerate(STAGES):
        restage.addAction(act(f"stage_{index}", stage, lambda _=False, s=stage: curation.restage(s),
                              f"Alt+{index + 1}", f"Set the selected tubule's stage to {stage}"))
    retype = edit.addMenu("Re&type cell")
    for index, cell_type in enumerate(CELL_TYPES):
        retype.addAction(act(f"type_{index}", cell_type, lambda _=False, t=cell_type: curation.retype(t),
                             f"Ctrl+Alt+{index + 1}", f"Set the selected cell's type to {cell_type}"))
    edit.addAction(act("delete_cell", "&Delete cell", curation.delete_cell, K.Delete, "Remove the selected cell"))
    edit.addAction(act("add_mode", "&Add cells by clicking", curation.set_add_mode, "A",
                       "While on, clicking the image adds a cell of the type chosen in Properties", checkable=True))
    shapes = w.shapes
    edit.addAction(act("draw_outline", "Dra&w tubule outline", shapes.set_draw_mode, "D",
                       "Click a missed tubule's outline point by point; double-click or Enter closes it. "
                       "Drag a selected outline's points or a cell box's corners to correct them", checkable=True))
    edit.addAction(act("finish_outline", "&Close outline", lambda: shapes.finish_outline(), ["Return", "Enter"],
                       "Close the outline being drawn into a tubule"))
    edit.addAction(act("remove_point", "Take back last &point", shapes.remove_point, "Backspace",
                       "Remove the last point of the outline being drawn"))
    for key in ("finish_outline", "remove_point"):  # only while drawing: Enter and Backspace stay the widgets'
        w.actions[key].setEnabled(False)
    edit.addAction(act("deselect", "Clear &selection", curation.clear_selection, "Esc"))

    view = bar.addMenu("&View")
    viewer = w.viewer
    view.addAction(act("fit", "&Fit image", viewer.fit, ["F", "Ctrl+0"]))
    view.addAction(act("zoom_in", "Zoom &in", lambda: viewer.zoom(1.5), [K.ZoomIn, "+", "="]))
    view.addAction(act("zoom_out", "Zoom &out", lambda: viewer.zoom(1 / 1.5), [K.ZoomOut, "-"]))
    view.addSeparator()
    view.addAction(act("next_image", "&Next image", lambda: w.step_image(1), ["N", "Ctrl+PgDown"]))
    view.addAction(act("prev_image", "&Previous image", lambda: w.step_image(-1), ["P", "Ctrl+PgUp"]))
    view.addAction(act("next_z", "Next focal plane", lambda: viewer.set_z(viewer.z + 1), "]"))
    view.addAction(act("prev_z", "Previous focal plane", lambda: viewer.set_z(viewer.z - 1), "["))
    view.addAction(act("toggle_overlays", "Show &overlays", w.results.toggle_overlays, "O", checkable=True))
    w.actions["toggle_overlays"].setChecked(True)
    view.addSeparator()
    docks = view.addMenu("&Panels")
    for index, (key, dock) in enumerate(w.docks.items()):
        action = dock.toggleViewAction()
        action.setShortcut(QKeySequence(f"Ctrl+Shift+{index + 1}"))
        docks.addAction(action)
        w.actions[f"dock_{key}"] = action

    analysis = bar.addMenu("&Analysis")
    analysis.addAction(act("run_selected", "&Run on selected images", lambda: runs.run_pipeline(False),
                           "Ctrl+R", "Queue the pipeline of the Run panel on the selected images"))
    analysis.addAction(act("run_all", "Run on &all images", lambda: runs.run_pipeline(True),
                           "Ctrl+Shift+R", "Queue the pipeline on every image of the project"))
    analysis.addAction(act("show_run_panel", "Show run &panel", runs.show_run_panel, "Ctrl+Shift+P"))
    analysis.addAction(act("train_corrections", "&Train on my corrections...", w.loop.train_on_corrections,
                           "Ctrl+Shift+T", "Fine-tune the model that made the shown run on your corrections, "
                           "then re-run and compare"))
    analysis.addSeparator()
    jobs = w.jobs_widget
    analysis.addAction(act("cancel_job", "&Cancel selected job", jobs.cancel_selected, "Ctrl+."))
    analysis.addAction(act("cancel_all", "Cancel all &jobs", w.queue.cancel_all, "Ctrl+Shift+."))
    analysis.addAction(act("job_details", "Job &details...", lambda: jobs.show_details(jobs.selected()), "Ctrl+J"))
    analysis.addSeparator()
    analysis.addAction(act("build_pyramid", "Build &overview levels of this image", runs.build_pyramid_for_current,
                           "Ctrl+B", "Cache downsampled levels of a big image in the project"))
    analysis.addAction(act("reload", "Re&load project", projects.reload_project, K.Refresh))

    models = bar.addMenu("&Models")
    models.addAction(act("model_library", "Model &library...", dialogs.model_library, "Ctrl+L",
                         "Shipped and user models with their cards; import and export"))
    models.addAction(act("train", "&Train a model...", dialogs.training_wizard, "Ctrl+T",
                         "Train on annotated or corrected images"))

    help_menu = bar.addMenu("&Help")
    help_menu.addAction(act("shortcuts", "&Keyboard shortcuts", dialogs.show_shortcuts, K.HelpContents))
    help_menu.addAction(act("about", "&About Stagescope", dialogs.show_about, "Shift+F1"))
