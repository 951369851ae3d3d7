"""Status bar, device detection, screenshots and readiness: what ``--screenshot`` and the tests wait on.

The device is detected on a reader thread some seconds after start (importing torch takes seconds
and the GIL): after the first picture, not before.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QFileDialog

from app.core.device import describe_device
from app.core.errors import UserError
from app.gui.workers import BackgroundRunner, freeze_gc_heap

if TYPE_CHECKING:
    from app.gui.main_window import MainWindow

READY_ROUNDS = 3  # ready this many event-loop rounds in a row counts as settled


def detect_device_task(choice: str) -> str:
    """Reader thread: the device a job would use, as text for the status bar."""
    if choice.strip().lower() == "cpu":
        return "CPU"
    from app.core.torch_preload import preload_torch_libraries

    preload_torch_libraries()  # the loader's ~0.5 s without the GIL: the window keeps drawing (bench/torch_import_stall.py)
    return describe_device(choice)


class WindowHooks:
    """The status bar's coordinates, values and device; screenshots; whether everything is drawn."""

    def __init__(self, window: MainWindow) -> None:
        self.w = window
        self.device_runner = BackgroundRunner(window, "stagescope-device")
        self.device_runner.done.connect(self._device_done, Qt.ConnectionType.QueuedConnection)

    def detect_device(self) -> None:
        """Detect the settings' device on a reader thread; the status bar shows it."""
        self.device_runner.submit("device", detect_device_task, self.w.settings.device)

    def _device_done(self, _key: object, text: str) -> None:
        self.w.device_label.setText(f"Device: {text}")
        freeze_gc_heap()  # torch is imported now: keep its objects out of later full collections

    def mouse_moved(self, x: float, y: float) -> None:
        """Show the image coordinates and the channel values under the mouse."""
        w = self.w
        size = w.viewer.image_size()
        if size is None or not (0 <= x < size[1] and 0 <= y < size[0]):
            w.coords_label.setText("")
            w.value_label.setText("")
            return
        w.coords_label.setText(f"x {int(x)}  y {int(y)}")
        values = w.viewer.pixel_values(x, y)
        if values is not None:
            names = [c.name for c in w.viewer.channels]
            w.value_label.setText("  ".join(f"{n}: {v:.4g}" for n, v in zip(names, values)))

    def save_screenshot_dialog(self) -> None:
        """Ask for a file and save a PNG of the window."""
        start = Path(self.w.settings.last_folder("reports")) / "stagescope.png"
        path, _ = QFileDialog.getSaveFileName(self.w, "Save screenshot", str(start), "PNG (*.png)")
        if path:
            self.save_screenshot(Path(path))

    def save_screenshot(self, path: Path) -> Path:
        """Save a PNG of the whole window."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.w.grab().save(str(path), "PNG"):
            raise UserError(f"{path}: cannot write the screenshot")
        return path

    def is_ready(self) -> bool:
        """Whether the current image, its detail and its overlays are drawn and no job is pending."""
        w = self.w
        return (w.viewer.is_idle() and not w.results.busy() and not w.queue.is_busy()
                and not self.device_runner.busy and not w.runs.selection_timer.isActive()
                and (w.current_image is None or w.viewer.pyramid is not None))

    def wait_until_ready(self, timeout_s: float = 60.0) -> bool:
        """Process events until :meth:`is_ready` (for screenshots and tests); False on timeout."""
        end = time.monotonic() + timeout_s
        settled = 0
        while time.monotonic() < end:
            QApplication.processEvents()
            if self.is_ready():
                settled += 1
                if settled >= READY_ROUNDS:
                    return True
            else:
                settled = 0
            time.sleep(0.02)
        return False

    def shutdown(self) -> None:
        """Stop the device reader."""
        self.device_runner.shutdown()
