"""Loading images and run results into the viewer, and redrawing a layer after each curation edit.

Results shown are always read from the run folder (objects JSON + edits.json) on a reader thread,
never kept only in memory.  Each run folder has one curation session (edits + undo stack) in the
window's undo group.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt

from app.core.edits import apply_edits
from app.core.errors import UserError
from app.core.formats import is_image_path, split_scene
from app.core.pyramid import pyramid_cache_dir
from app.core.results import read_objects
from app.gui.curation import CurationSession
from app.gui.overlays import prepare_document, prepare_layer
from app.gui.run_files import base_objects_file, latest_run_with_results, objects_file, seed_edits, stack_file
from app.gui.theme import GENERATED_COLOUR
from app.gui.workers import BackgroundRunner
from app.pipelines.kaizen.drawing import generated_objects_rgba, outline_objects_from_stack

if TYPE_CHECKING:
    from app.gui.window_api import WindowApi

BACKGROUND_EDIT_OBJECTS = 5000  # layers this big are redrawn after an edit on a reader thread


def load_results_task(path: Path, edits: list[dict], image: str, stack: Path | None = None) -> dict[str, Any]:
    """Reader thread: read an objects file, apply the edits and prepare the drawing arrays."""
    doc = read_objects(path)
    generated = None
    if stack is not None:
        import numpy as np

        with np.load(stack) as data:
            arrays = {key: data[key] for key in data.files}
        generated = generated_objects_rgba(arrays, GENERATED_COLOUR)
        outline_objects_from_stack(doc, arrays)  # Kaizen: outlines of the whole objects, not boxes
    applied = apply_edits(doc, edits)
    return {"doc": doc, "applied": applied, "prepared": prepare_document(applied), "path": path, "image": image,
            "generated": generated}


def apply_edits_task(doc: dict, edits: list[dict], layer: str, key: Any) -> dict[str, Any]:
    """Reader thread: a layer with the edits applied, prepared for drawing."""
    objects = apply_edits(doc, edits)["layers"].get(layer, [])
    return {"layer": layer, "objects": objects, "prepared": prepare_layer(layer, objects), "key": key}


class ResultsController:
    """Opens images and shows a run's results on them; keeps the curation sessions of the run folders."""

    def __init__(self, window: WindowApi) -> None:
        self.w = window
        self.doc: dict[str, Any] | None = None  # results of the current image, before edits
        self.doc_key: tuple[str, str] | None = None  # (run folder, image)
        self.pending = False
        self.sessions: dict[Path, CurationSession] = {}
        self.runner = BackgroundRunner(window, "stagescope-results")
        self.runner.done.connect(self._done, Qt.ConnectionType.QueuedConnection)
        self.runner.error.connect(self._error, Qt.ConnectionType.QueuedConnection)

    def busy(self) -> bool:
        """Whether results are being read or redrawn."""
        return self.pending or self.runner.busy

    def forget(self) -> None:
        """Drop the shown document (another project was opened)."""
        self.doc = self.doc_key = None

    def open_image(self, name: str | None) -> None:
        """Show an image of the project with the results of the best run for it."""
        w = self.w
        if w.project is None or name is None:
            return
        try:
            path = w.project.image_path(name)
            entry = w.project.image(name)
        except UserError as error:
            w.show_error("Cannot open the image", str(error))
            return
        if not path.is_file() and not is_image_path(split_scene(path)[0]):  # a scene, an OME-Zarr folder
            box = w.show_error("Image file missing", f"image {name!r}: {path} not found (moved or deleted?)")
            w.image_tools.offer_locate(box, name)  # "Locate file...": relinks the other moved files too
            return
        w.current_image = name
        w.browser.select_image(name, emit=False)
        w.viewer.open_image(name, path, pyramid_cache_dir(w.project.folder, name))
        w.curation.clear_selection()
        w.runs.selection_timer.start(0)  # after the first picture is on its way
        w.properties.show_info(f"Image {name}", {"file": str(path), "mode": entry.mode,
                                                 "channels": ", ".join(entry.channels) or "?",
                                                 "pixel size (µm)": entry.pixel_size_um or "unknown",
                                                 "group": entry.group or ""})
        run = w.current_run if w.current_run is not None and name in w.current_run.results \
            and objects_file(w.current_run, name) is not None else latest_run_with_results(w.project, name)
        self.show_results(run, name)

    def step_image(self, step: int) -> None:
        """Show the next (or previous) image of the project."""
        w = self.w
        if w.project is None:
            return
        names = [e.name for e in w.project.images()]
        if not names:
            return
        index = names.index(w.current_image) if w.current_image in names else -step
        self.open_image(names[(index + step) % len(names)])

    def show_run(self, run: Any) -> bool:
        """Show a run's results: on the current image if the run has it, else on its first image."""
        w = self.w
        w.current_run = run
        if w.current_image in run.results:
            self.show_results(run, w.current_image)
        elif run.results:
            self.open_image(next(iter(run.results)))
        else:
            return False
        return True

    def select_run(self, run_id: str) -> None:
        """The browser chose a run: show it (a run without finished images is only mentioned)."""
        run = self.w.guard("Cannot read the run", self.w.project.get_run, run_id)
        if run is not None and not self.show_run(run):
            self.w.statusBar().showMessage(f"Run {run_id} has no finished images yet", 5000)

    def select_run_image(self, run_id: str, image: str) -> None:
        """The browser chose an image under a run: show that run's results on it."""
        w = self.w
        run = w.guard("Cannot read the run", w.project.get_run, run_id)
        if run is None:
            return
        w.current_run = run
        if image != w.current_image:
            self.open_image(image)
        else:
            self.show_results(run, image)

    def show_results(self, run: Any, image: str) -> None:
        """Load a run's objects for an image (in the background) and draw them as overlays."""
        w = self.w
        w.current_run = run
        if run is not None:
            w.run_panel.suggest_pipeline(run.pipeline)  # the panel shows what made these results
        path = base_objects_file(run, image) if run is not None else None
        if path is None:
            self.doc = self.doc_key = None
            w.viewer.overlays.clear()
            w.undo_group.setActiveStack(None)
            w.properties.set_curation_enabled(False, "Run a pipeline to get results to curate")
            return
        session = self.session_for(run.folder)
        if not session.edits:
            session.seed(seed_edits(run, image))
        w.undo_group.setActiveStack(session.stack)
        self.doc_key = (str(run.folder), image)
        self.pending = True
        self.runner.submit("results", load_results_task, path, list(session.edits), image, stack_file(run, image))
        w.browser.select_run(run.id)
        w.browser.select_image(image, emit=False)

    def _done(self, key: Any, result: dict[str, Any]) -> None:
        w = self.w
        self.pending = False
        if key == "edit":
            if result["key"] == self.doc_key:
                self._layer_edited(result["layer"], result["objects"], result["prepared"])
            return
        if self.doc_key is None or result["image"] != w.current_image:
            return
        self.doc = result["doc"]
        w.viewer.overlays.clear_image_layers()
        w.viewer.overlays.set_document(result["applied"], result["prepared"])
        if result.get("generated") is not None:
            w.viewer.overlays.set_image_layer("generated objects", *result["generated"])
        w.properties.set_curation_enabled("cells" in result["applied"].get("layers", {}),
                                          "These results have no cells layer")
        count = w.viewer.overlays.object_count()
        w.statusBar().showMessage(f"{w.current_image}: {count} objects from run {w.current_run.id}", 5000)

    def _error(self, _key: Any, message: str, details: str) -> None:
        self.pending = False
        self.w.show_error("Cannot show the results", message, details)

    def session_for(self, run_folder: Path) -> CurationSession:
        """The curation session (edits + undo stack) of a run folder, created on first use."""
        run_folder = Path(run_folder)
        if run_folder not in self.sessions:
            session = CurationSession(run_folder, self.w)
            session.changed.connect(lambda image, layer, s=session: self._edits_changed(s, image, layer))
            self.w.undo_group.addStack(session.stack)
            self.sessions[run_folder] = session
        return self.sessions[run_folder]

    def current_session(self) -> CurationSession | None:
        """The curation session of the shown results, or None when nothing is shown."""
        if self.w.current_run is None or self.doc is None:
            return None
        return self.session_for(self.w.current_run.folder)

    def _edits_changed(self, session: CurationSession, image: str, layer: str) -> None:
        w = self.w
        if self.doc is None or w.current_run is None or image not in ("", w.current_image):
            return
        if session is not self.sessions.get(Path(w.current_run.folder)):
            return
        w.browser.update_doubt(w.current_run, w.current_image)  # a corrected section is surer now
        size = len(self.doc.get("layers", {}).get(layer, []))
        if size >= BACKGROUND_EDIT_OBJECTS:  # big layers are redrawn from a reader thread: no stall
            self.pending = True
            self.runner.submit("edit", apply_edits_task, self.doc, list(session.edits), layer, self.doc_key)
            return
        applied = apply_edits(self.doc, session.edits)
        if layer == "tubules" and "cells" in w.viewer.overlays.layers:  # an outline edit moves cells between tubules
            w.viewer.overlays.update_layer("cells", applied["layers"].get("cells", []))
        self._layer_edited(layer, applied["layers"].get(layer, []), None)

    def _layer_edited(self, layer: str, objects: list[dict[str, Any]], prepared: Any) -> None:
        w = self.w
        w.viewer.overlays.update_layer(layer, objects, prepared)
        selected = w.viewer.overlays.selected
        if selected is not None:
            w.curation.show_selected(*selected)
        else:
            w.properties.show_object(None, None)

    def toggle_overlays(self, on: bool) -> None:
        """Show or hide every overlay layer (View > Show overlays)."""
        for layer in self.w.viewer.overlays.layers.values():
            layer.set_visible(on)
        self.w.layers_panel.refresh()
