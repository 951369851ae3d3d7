"""The window's layout: docks around the viewer, the status bar, and the saved geometry and dock state."""

from __future__ import annotations

from PySide6.QtCore import QByteArray, QSize, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QDockWidget, QLabel, QMainWindow, QWidget

DEFAULT_SIZE = QSize(1500, 950)
SCREEN_SHARE = 0.95  # a first window on a smaller screen leaves room for the frame and panels
SIDE_WIDTH = 330  # project browser and layers docks
JOBS_HEIGHT = 120
LEFT_SPLIT = (300, 520)  # project browser over run panel
RIGHT_SPLIT = (380, 420)  # layers over properties / display

LEFT, RIGHT = Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea
BOTTOM = Qt.DockWidgetArea.BottomDockWidgetArea
PANELS = (("project", "Project", LEFT), ("layers", "Layers", RIGHT), ("properties", "Properties", RIGHT),
          ("display", "Display", RIGHT), ("run", "Run", LEFT), ("jobs", "Jobs", BOTTOM))  # in this order


def add_dock(window: QMainWindow, key: str, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
    """Put ``widget`` in a dock of the window; the dock's object name comes from ``key``."""
    dock = QDockWidget(title, window)
    dock.setObjectName(f"dock-{key}")  # saveState / restoreState find it by this name
    dock.setWidget(widget)
    window.addDockWidget(area, dock)
    return dock


def build_docks(window: QMainWindow, central: QWidget, panels: dict[str, QWidget]) -> dict[str, QDockWidget]:
    """Project and Run on the left, Layers and Properties / Display on the right, Jobs below.

    ``panels`` holds a widget for each key of :data:`PANELS`; the docks come back under the same keys.
    """
    w = window
    w.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)
    w.setCentralWidget(central)
    docks = {key: add_dock(w, key, title, panels[key], area) for key, title, area in PANELS}
    w.tabifyDockWidget(docks["properties"], docks["display"])
    docks["properties"].raise_()
    w.resizeDocks([docks["project"]], [SIDE_WIDTH], Qt.Orientation.Horizontal)
    w.resizeDocks([docks["layers"]], [SIDE_WIDTH], Qt.Orientation.Horizontal)
    w.resizeDocks([docks["jobs"]], [JOBS_HEIGHT], Qt.Orientation.Vertical)
    w.resizeDocks([docks["project"], docks["run"]], list(LEFT_SPLIT), Qt.Orientation.Vertical)
    w.resizeDocks([docks["layers"], docks["properties"]], list(RIGHT_SPLIT), Qt.Orientation.Vertical)
    return docks


def build_status_bar(window: QMainWindow) -> tuple[QLabel, QLabel, QLabel]:
    """Coordinates and channel values under the mouse on the left, the device on the right.

    Returns the three labels: coordinates, values, device.
    """
    coords, values, device = QLabel(""), QLabel(""), QLabel("Device: ...")
    window.statusBar().addWidget(coords)
    window.statusBar().addWidget(values, 1)
    window.statusBar().addPermanentWidget(device)
    return coords, values, device


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
