"""The window's layout: docks around the viewer, the status bar, and the saved geometry and dock state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QByteArray, QSize, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QDockWidget, QLabel, QMainWindow, QWidget

if TYPE_CHECKING:
    from app.gui.main_window import MainWindow

DEFAULT_SIZE = QSize(1500, 950)
SCREEN_SHARE = 0.95  # a first window on a smaller screen leaves room for the frame and panels
SIDE_WIDTH = 330  # project browser and layers docks
JOBS_HEIGHT = 120
LEFT_SPLIT = (300, 520)  # project browser over run panel
RIGHT_SPLIT = (380, 420)  # layers over properties / display


def add_dock(window: MainWindow, key: str, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
    """Put ``widget`` in a dock of the window, known as ``window.docks[key]``."""
    dock = QDockWidget(title, window)
    dock.setObjectName(f"dock-{key}")  # saveState / restoreState find it by this name
    dock.setWidget(widget)
    window.addDockWidget(area, dock)
    window.docks[key] = dock
    return dock


def build_docks(w: MainWindow) -> None:
    """Project and Run on the left, Layers and Properties / Display on the right, Jobs below."""
    w.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)
    w.setCentralWidget(w.viewer)
    left, right = Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea
    add_dock(w, "project", "Project", w.browser, left)
    add_dock(w, "layers", "Layers", w.layers_panel, right)
    add_dock(w, "properties", "Properties", w.properties, right)
    add_dock(w, "display", "Display", w.channel_panel, right)
    add_dock(w, "run", "Run", w.run_panel, left)
    add_dock(w, "jobs", "Jobs", w.jobs_widget, Qt.DockWidgetArea.BottomDockWidgetArea)
    docks = w.docks
    w.tabifyDockWidget(docks["properties"], docks["display"])
    docks["properties"].raise_()
    w.resizeDocks([docks["project"]], [SIDE_WIDTH], Qt.Orientation.Horizontal)
    w.resizeDocks([docks["layers"]], [SIDE_WIDTH], Qt.Orientation.Horizontal)
    w.resizeDocks([docks["jobs"]], [JOBS_HEIGHT], Qt.Orientation.Vertical)
    w.resizeDocks([docks["project"], docks["run"]], list(LEFT_SPLIT), Qt.Orientation.Vertical)
    w.resizeDocks([docks["layers"], docks["properties"]], list(RIGHT_SPLIT), Qt.Orientation.Vertical)


def build_status_bar(w: MainWindow) -> None:
    """Coordinates and channel values under the mouse on the left, the device on the right."""
    w.coords_label = QLabel("")
    w.value_label = QLabel("")
    w.device_label = QLabel("Device: ...")
    w.statusBar().addWidget(w.coords_label)
    w.statusBar().addWidget(w.value_label, 1)
    w.statusBar().addPermanentWidget(w.device_label)


def window_state(w: QMainWindow) -> dict[str, str]:
    """The window's geometry and dock state, as text for the settings file."""
    return {"geometry": bytes(w.saveGeometry().toBase64()).decode(),
            "state": bytes(w.saveState().toBase64()).decode()}


def default_size(available: QSize | None) -> QSize:
    """The first window's size: :data:`DEFAULT_SIZE`, shrunk to fit a smaller screen's ``available`` area
    (a 1440 x 900 laptop screen otherwise cuts off the right docks and the status bar)."""
    if available is None or available.isEmpty():
        return QSize(DEFAULT_SIZE)
    return QSize(min(DEFAULT_SIZE.width(), int(available.width() * SCREEN_SHARE)),
                 min(DEFAULT_SIZE.height(), int(available.height() * SCREEN_SHARE)))


def restore_window(w: QMainWindow, saved: dict[str, str]) -> None:
    """Restore the geometry and dock state saved by :func:`window_state` (a default size without)."""
    geometry, state = saved.get("geometry"), saved.get("state")
    if geometry:
        w.restoreGeometry(QByteArray.fromBase64(geometry.encode()))
    else:
        screen = w.screen() or QGuiApplication.primaryScreen()
        w.resize(default_size(screen.availableGeometry().size() if screen is not None else None))
    if state:
        w.restoreState(QByteArray.fromBase64(state.encode()))
