"""The project browser dock: images (grouped, with thumbnails), runs and reports of the open project.

It only lists what the project folder holds and says what the user picked, through signals; the
main window opens images, loads results and adds files.  Images can be added by dropping files on
it.  Thumbnails are read on a background thread from the image (or its cached overview levels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QItemSelectionModel, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView, QLineEdit, QMenu, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget,
)

from app.core.pyramid import open_pyramid, pyramid_cache_dir
from app.gui.workers import BackgroundRunner

THUMB = 48
# programmatic selection replaces the selection whatever modifier keys Qt believes are held (a held Ctrl
# would otherwise toggle the item)
CLEAR_AND_SELECT = QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows
IMAGE, GROUP, RUN, RUN_IMAGE, REPORT, SECTION = range(6)


def thumbnail_array(path: Path, cache_dir: Path | None, size: int = THUMB) -> np.ndarray | None:
    """A small (h, w, 3) uint8 picture of an image (first channels as gray or RGB), or None if too big."""
    from app.gui.channel_display import channel_stats, composite, default_colours, ChannelDisplay

    with open_pyramid(path, cache_dir) as pyramid:
        level = pyramid.overview_level()
        if level is None:
            return None
        raw = pyramid.read(level)
    step = max(1, int(np.ceil(max(raw.shape[1:]) / size)))
    small = raw[:, ::step, ::step]
    names = [f"c{i}" for i in range(small.shape[0])]
    displays = [ChannelDisplay(n, c, lv) for n, c, (lv, _h) in zip(names, default_colours(names), channel_stats(small))]
    return composite(small, displays)


class _DropTree(QTreeWidget):
    """A tree that accepts image files dropped from the desktop."""

    files_dropped = Signal(list)

    def __init__(self) -> None:
        super().__init__()
        self.setAcceptDrops(True)
        self.viewport().setAcceptDrops(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DropOnly)

    @staticmethod
    def _files(event: Any) -> list[Path]:
        mime = event.mimeData()
        if not mime.hasUrls():
            return []
        return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()]

    def dragEnterEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        if self._files(event):
            event.acceptProposedAction()
        else:
            super().dragEnterEvent(event)

    def dragMoveEvent(self, event: Any) -> None:  # noqa: N802
        if self._files(event):
            event.acceptProposedAction()
        else:
            super().dragMoveEvent(event)

    def dropEvent(self, event: Any) -> None:  # noqa: N802
        files = self._files(event)
        if files:
            event.acceptProposedAction()
            self.files_dropped.emit(files)
        else:
            super().dropEvent(event)


class ProjectBrowser(QWidget):
    """Images, runs and reports of a project as a tree; see the module docstring."""

    image_selected = Signal(str)
    run_selected = Signal(str)  # run id
    run_image_selected = Signal(str, str)  # run id, image name
    report_activated = Signal(object)  # Path
    files_dropped = Signal(list)  # list[Path]
    remove_image_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project: Any = None
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter images...")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._apply_filter)
        self.tree = _DropTree()
        self.tree.setHeaderHidden(True)
        self.tree.setIconSize(pixmap_size())
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.tree.currentItemChanged.connect(self._current_changed)
        self.tree.itemActivated.connect(self._activated)
        self.tree.files_dropped.connect(self.files_dropped)
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        self.tree.setToolTip("Drop image files here to add them to the project")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.filter)
        layout.addWidget(self.tree)
        self.thumbnails: dict[str, QIcon] = {}
        self.runner = BackgroundRunner(self, "stagescope-thumbnails")
        self.runner.done.connect(self._thumbnail_done, Qt.ConnectionType.QueuedConnection)
        self._image_items: dict[str, QTreeWidgetItem] = {}
        self._run_items: dict[str, QTreeWidgetItem] = {}
        self._quiet = False
        self.shown_run: str | None = None  # the run whose results the viewer draws (shown bold)

    # ------------------------------------------------------------------ content

    def set_project(self, project: Any) -> None:
        """Show a project (None for none)."""
        self.project = project
        self.thumbnails.clear()
        self.refresh()

    def refresh(self) -> None:
        """Re-read the project's images, runs and reports, keeping the current selection."""
        current = self._current_key()
        selected = [self._key(item) for item in self.tree.selectedItems()]  # a run ending keeps the user's picks
        self._quiet = True
        self.tree.clear()
        self._image_items.clear()
        self._run_items.clear()
        if self.project is None:
            self._quiet = False
            return
        images = self.project.images()
        top = self._section(f"Images ({len(images)})", "images")
        groups: dict[str | None, QTreeWidgetItem] = {}
        use_groups = any(e.group for e in images)
        for entry in images:
            parent = top
            if use_groups:
                group = entry.group or "(no group)"
                if group not in groups:
                    groups[group] = QTreeWidgetItem(top, [group])
                    groups[group].setData(0, Qt.ItemDataRole.UserRole, (GROUP, group))
                    groups[group].setExpanded(True)
                parent = groups[group]
            item = QTreeWidgetItem(parent, [entry.name])
            item.setData(0, Qt.ItemDataRole.UserRole, (IMAGE, entry.name))
            channels = ", ".join(entry.channels) if entry.channels else "?"
            item.setToolTip(0, f"{entry.name}\n{entry.path}\nchannels: {channels}\nmode: {entry.mode}")
            if entry.name in self.thumbnails:
                item.setIcon(0, self.thumbnails[entry.name])
            else:
                self._request_thumbnail(entry.name)
            self._image_items[entry.name] = item
        top.setExpanded(True)
        runs = self.project.runs()
        run_top = self._section(f"Runs ({len(runs)})", "runs")
        from app.pipelines.stagetool.uncertainty import suggest_order  # light: no torch

        for run in reversed(runs):
            label = f"{run.pipeline} · {run.id[:15]} · {run.status} ({len(run.results)} image(s))"
            item = QTreeWidgetItem(run_top, [label])
            item.setData(0, Qt.ItemDataRole.UserRole, (RUN, run.id))
            failed = "".join(f"\nfailed: {name}: {why}" for name, why in run.failed.items())
            item.setToolTip(0, f"{run.folder}\nstarted {run.started}\nstatus {run.status}{failed}")
            doubts = run_doubts(run)
            order = [n for n, _ in suggest_order(doubts)] + [n for n in run.results if n not in doubts] \
                if doubts else list(run.results)
            for image_name in order:
                child = QTreeWidgetItem(item, [image_name])
                child.setData(0, Qt.ItemDataRole.UserRole, (RUN_IMAGE, (run.id, image_name)))
                if image_name in doubts:
                    child.setText(0, f"{image_name}  ·  doubt {doubts[image_name]['score']:.2f}")
                    child.setToolTip(0, doubt_tooltip(doubts[image_name]))
            self._run_items[run.id] = item
        run_top.setExpanded(True)
        if self.shown_run in self._run_items:
            self.select_run(self.shown_run)
        reports = self.project.reports()
        report_top = self._section(f"Reports ({len(reports)})", "reports")
        for path in reports:
            item = QTreeWidgetItem(report_top, [path.name])
            item.setData(0, Qt.ItemDataRole.UserRole, (REPORT, str(path)))
            item.setToolTip(0, str(path))
        report_top.setExpanded(True)
        self._quiet = False
        if current is not None:
            self._select_key(current, selected)
        self._apply_filter(self.filter.text())

    def update_doubt(self, run: Any, image: str) -> None:
        """Score one section of a run again (after an edit); the list keeps its order until the next refresh."""
        item = self._run_items.get(run.id)
        record = run_doubts(run, [image]).get(image)
        if item is None or record is None:
            return
        for index in range(item.childCount()):
            child = item.child(index)
            if child.data(0, Qt.ItemDataRole.UserRole) == (RUN_IMAGE, (run.id, image)):
                child.setText(0, f"{image}  ·  doubt {record['score']:.2f}")
                child.setToolTip(0, doubt_tooltip(record))

    def _section(self, title: str, key: str) -> QTreeWidgetItem:
        item = QTreeWidgetItem(self.tree, [title])
        item.setData(0, Qt.ItemDataRole.UserRole, (SECTION, key))
        font = item.font(0)
        font.setBold(True)
        item.setFont(0, font)
        return item

    def _apply_filter(self, text: str) -> None:
        text = text.lower().strip()
        for name, item in self._image_items.items():
            item.setHidden(bool(text) and text not in name.lower())

    # ------------------------------------------------------------------ thumbnails

    def _request_thumbnail(self, name: str) -> None:
        try:
            path = self.project.image_path(name)
        except Exception:  # noqa: BLE001 - a broken entry simply gets no thumbnail
            return
        cache = pyramid_cache_dir(self.project.folder, name)
        self.runner.submit(("thumb", name), _thumbnail_task, name, path, cache)

    def _thumbnail_done(self, key: Any, result: Any) -> None:
        name, rgb = result
        if rgb is None:
            return
        rgb = np.ascontiguousarray(rgb)
        image = QImage(rgb.data, rgb.shape[1], rgb.shape[0], rgb.strides[0], QImage.Format.Format_RGB888).copy()
        icon = QIcon(QPixmap.fromImage(image))
        self.thumbnails[name] = icon
        item = self._image_items.get(name)
        if item is not None:
            item.setIcon(0, icon)

    def refresh_thumbnail(self, name: str) -> None:
        """Read an image's thumbnail again (e.g. after its overview levels were built)."""
        self.thumbnails.pop(name, None)
        if name in self._image_items:
            self._request_thumbnail(name)

    # ------------------------------------------------------------------ selection

    def _key(self, item: QTreeWidgetItem | None) -> tuple[int, Any] | None:
        return item.data(0, Qt.ItemDataRole.UserRole) if item is not None else None

    def _current_key(self) -> tuple[int, Any] | None:
        return self._key(self.tree.currentItem())

    def _select_key(self, key: tuple[int, Any], also: list[tuple[int, Any]] | None = None) -> None:
        """Make the item of ``key`` current (quietly), and select the items of ``also`` with it."""
        item = self._item_for(key)
        if item is not None:
            self._quiet = True
            self.tree.setCurrentItem(item, 0, CLEAR_AND_SELECT)
            for other in filter(None, (self._item_for(k) for k in also or [])):
                other.setSelected(True)
            self._quiet = False

    def _item_for(self, key: tuple[int, Any] | None) -> QTreeWidgetItem | None:
        """The tree item of an image, run or run image key (None when it is gone)."""
        if key is None:
            return None
        kind, value = key
        item = None
        if kind == IMAGE:
            item = self._image_items.get(value)
        elif kind == RUN:
            item = self._run_items.get(value)
        elif kind == RUN_IMAGE:
            parent = self._run_items.get(value[0])
            if parent is not None:
                item = next((parent.child(i) for i in range(parent.childCount())
                             if self._key(parent.child(i)) == (RUN_IMAGE, tuple(value))), None)
        return item

    def select_image(self, name: str, emit: bool = True) -> None:
        """Make ``name`` the current image (emits image_selected unless ``emit`` is False).

        An image that is already current keeps the selection as it is: a Ctrl+click opens the image
        while the tree is still adding it to the selection, and re-selecting it then would drop the others.
        """
        item = self._image_items.get(name)
        if item is None or item is self.tree.currentItem():
            return
        self._quiet = not emit
        self.tree.setCurrentItem(item, 0, CLEAR_AND_SELECT)
        self._quiet = False

    def select_run(self, run_id: str, emit: bool = False) -> None:
        """Show which run's results are drawn: bold, without touching the selected images.

        With ``emit`` the run becomes the current item (and run_selected is emitted), as a click would.
        """
        self.shown_run = run_id
        for key, run_item in self._run_items.items():
            font = run_item.font(0)
            font.setBold(key == run_id)
            run_item.setFont(0, font)
        item = self._run_items.get(run_id)
        if item is not None and emit:
            self.tree.setCurrentItem(item, 0, CLEAR_AND_SELECT)

    def selected_images(self) -> list[str]:
        """Images selected in the tree (a group or run counts as its images), in project order."""
        names: set[str] = set()
        for item in self.tree.selectedItems():
            kind, value = self._key(item)
            if kind == IMAGE:
                names.add(value)
            elif kind == GROUP:
                names.update(self._children_images(item))
            elif kind == RUN_IMAGE:
                names.add(value[1])
            elif kind == SECTION and value == "images":
                names.update(self._image_items)
        order = [e.name for e in self.project.images()] if self.project is not None else []
        return [n for n in order if n in names]

    def _children_images(self, item: QTreeWidgetItem) -> list[str]:
        out = []
        for i in range(item.childCount()):
            kind, value = self._key(item.child(i))
            if kind == IMAGE:
                out.append(value)
        return out

    def _current_changed(self, current: QTreeWidgetItem | None, _previous: Any) -> None:
        if self._quiet or current is None:
            return
        kind, value = self._key(current)
        if kind == IMAGE:
            self.image_selected.emit(value)
        elif kind == RUN:
            self.run_selected.emit(value)
        elif kind == RUN_IMAGE:
            self.run_image_selected.emit(value[0], value[1])

    def _activated(self, item: QTreeWidgetItem, _column: int) -> None:
        kind, value = self._key(item)
        if kind == REPORT:
            self.report_activated.emit(Path(value))

    def _context_menu(self, pos: Any) -> None:
        item = self.tree.itemAt(pos)
        if item is None:
            return
        kind, value = self._key(item)
        menu = QMenu(self)
        if kind == IMAGE:
            menu.addAction("Open", lambda: self.image_selected.emit(value))
            menu.addAction("Remove from project...", lambda: self.remove_image_requested.emit(value))
        elif kind == RUN:
            menu.addAction("Show results", lambda: self.run_selected.emit(value))
        elif kind == REPORT:
            menu.addAction("Open", lambda: self.report_activated.emit(Path(value)))
        if not menu.isEmpty():
            menu.exec(self.tree.viewport().mapToGlobal(pos))

    def shutdown(self) -> None:
        self.runner.shutdown()


def run_doubts(run: Any, images: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The run's per-section uncertainty (app/gui/correction_loop.py); {} when it has none or it cannot be read."""
    from app.gui.correction_loop import section_doubts

    try:
        return section_doubts(run, images)
    except Exception:  # noqa: BLE001 - a listing never fails on one run's files
        return {}


def doubt_tooltip(record: dict[str, Any]) -> str:
    """What a section's doubt score means, for its tooltip."""
    stages = ", ".join(record.get("stages") or {}) or "none"
    return (f"doubt {record['score']:.2f} (0 = sure, 1 = guessing): {record.get('ambiguous_tubules', 0)} tubule(s) "
            f"between two stages, {record.get('unsure_cells', 0)} unsure cell(s); stages shown: {stages}.\n"
            "Sections are listed in the order to correct them: each next one shows the most stages the ones "
            "above it do not, the most doubtful among equals.")


def pixmap_size() -> Any:
    from PySide6.QtCore import QSize

    return QSize(THUMB, THUMB)


def _thumbnail_task(name: str, path: Path, cache: Path) -> tuple[str, np.ndarray | None]:
    """Reader thread: the thumbnail pixels of one image (None when it cannot be made cheaply)."""
    try:
        return name, thumbnail_array(path, cache)
    except Exception:  # noqa: BLE001 - no thumbnail is not worth an error box
        return name, None
