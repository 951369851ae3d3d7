"""Project operations of the window: open, create, reload, add and remove images, recent projects."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QApplication, QFileDialog

from app.core.errors import UserError
from app.core.formats import IMAGE_SUFFIXES
from app.core.images import list_images
from app.core.readers import preload as preload_readers
from app.gui.run_files import objects_file

if TYPE_CHECKING:
    from app.gui.window_api import WindowApi


class ProjectController:
    """Opens and edits the project shown in the window; problems are shown in the window."""

    def __init__(self, window: WindowApi) -> None:
        self.w = window

    def open_project(self, folder: str | Path, image: str | None = None) -> bool:
        """Open a project folder; shows ``image`` (or the newest image with results, or the first)."""
        from app.core.project import Project

        w = self.w
        project = w.guard("Cannot open the project", Project.open, folder)
        if project is None:
            return False
        w.runs.facts.clear()
        self._set_project(project)
        w.settings.add_recent_project(project.folder)
        w.settings.remember_folder("project", project.folder.parent)
        self.update_recent_menu()
        names = [e.name for e in project.images()]
        if image is not None and image not in names:
            w.show_error("No such image", f"project {project.name!r} has no image named {image!r}; "
                         f"images: {', '.join(names[:10]) or 'none'}")
            image = None
        w.open_image(image or self.default_image())
        return True

    def _set_project(self, project: Any) -> None:
        w = self.w
        w.project = project  # the window title follows the session
        w.current_run = None
        w.current_image = None
        w.results.forget()
        w.viewer.close_image()
        w.browser.set_project(project)
        if project is not None:  # bioio-ome-zarr's import alone takes seconds: not on the first picture's time
            paths = [e.path for e in project.images()]
            w._preload = threading.Thread(target=preload_readers, args=(paths,), daemon=True, name="preload-readers")
            w._preload.start()
        w.properties.show_info(f"Project {project.name}", {"folder": str(project.folder),
                                                           "images": len(project.images()),
                                                           "runs": len(project.runs())})

    def default_image(self) -> str | None:
        """The image to show first: the newest one with results, else the first image."""
        project = self.w.project
        if project is None:
            return None
        images = [e.name for e in project.images()]
        for run in reversed(project.runs()):
            for name in run.results:
                if name in images and objects_file(run, name) is not None:
                    return name
        return images[0] if images else None

    def reload_project(self) -> None:
        """Re-read the project from disk (runs written by a batch outside the app appear)."""
        w = self.w
        if w.project is None:
            return
        from app.core.project import Project

        project = w.guard("Cannot reload the project", Project.open, w.project.folder)
        if project is not None:
            w.project = project
            w.browser.set_project(project)
            if w.current_image:
                w.browser.select_image(w.current_image, emit=False)

    def new_project_dialog(self) -> None:
        """Ask for an empty folder and create a project there."""
        folder = QFileDialog.getExistingDirectory(self.w, "New project: choose an empty folder",
                                                  self.w.settings.last_folder("project"))
        if folder:
            self.new_project(folder)

    def new_project(self, folder: str | Path) -> bool:
        """Create a project in ``folder`` and open it."""
        from app.core.project import Project

        project = self.w.guard("Cannot create the project", Project.create, folder)
        if project is None:
            return False
        return self.open_project(project.folder)

    def open_project_dialog(self) -> None:
        """Ask for a project folder and open it."""
        folder = QFileDialog.getExistingDirectory(self.w, "Open project folder",
                                                  self.w.settings.last_folder("project"))
        if folder:
            self.open_project(folder)

    def update_recent_menu(self) -> None:
        """List the recent projects in File > Open recent."""
        menu, recent = self.w.recent_menu, self.w.settings.recent_projects
        menu.clear()
        for index, folder in enumerate(recent):
            action = menu.addAction(f"&{index + 1} {folder}", lambda f=folder: self.open_project(f))
            if index < 9:
                action.setShortcut(QKeySequence(f"Ctrl+Alt+Shift+{index + 1}"))
        menu.setEnabled(bool(recent))

    def add_images_dialog(self, mode: str = "link") -> None:
        """Ask for image files and add them (linked or copied)."""
        w = self.w
        if not self.need_project():
            return
        patterns = " ".join(f"*{s}" for s in IMAGE_SUFFIXES)
        files, _ = QFileDialog.getOpenFileNames(w, "Add images", w.settings.last_folder("images"),
                                                f"Images ({patterns});;All files (*)")
        if files:
            w.settings.remember_folder("images", files[0])
            self.add_images([Path(f) for f in files], mode)

    def add_images(self, paths: list[Path], mode: str = "link", group: str | None = None) -> list[str]:
        """Add files (folders: their images) to the project; problems are listed in one message."""
        w = self.w
        if not self.need_project():
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
                    added.append(w.project.add_image(path, mode=mode, group=group).name)
                except UserError as error:
                    problems.append(f"{path.name}: {error}")
        finally:
            QApplication.restoreOverrideCursor()
        w.browser.refresh()
        if problems:
            w.show_error("Some images were not added", f"{len(problems)} of {len(files)} file(s) could not be added.",
                         "\n".join(problems))
        if added:
            w.statusBar().showMessage(f"Added {len(added)} image(s)", 5000)
            if w.current_image is None:
                w.open_image(added[0])
        return added

    def remove_current_image(self) -> None:
        """Forget the image on screen (after asking)."""
        if self.w.current_image:
            self.remove_image(self.w.current_image)

    def remove_image(self, name: str) -> None:
        """Forget an image of the project (after asking); a linked file is not deleted."""
        w = self.w
        if w.project is None or not w.confirm(
                "Remove image", f"Remove {name!r} from the project? A linked file stays where it is; "
                                "a copy inside the project is deleted. Results of runs are kept."):
            return
        if w.guard("Cannot remove the image", w.project.remove_image, name) is None and \
                name in [e.name for e in w.project.images()]:
            return
        if name == w.current_image:
            w.viewer.close_image()
            w.current_image = None
        w.browser.refresh()

    def need_project(self) -> bool:
        """Whether a project is open; if not, say so."""
        if self.w.project is None:
            self.w.show_error("No project", "Open or create a project first (File menu).")
            return False
        return True
