"""A notice when a long job ends: a desktop notification, else a status-bar line; the window asks for attention.

An overnight batch can end while nobody watches the window: a job that ran at least
:data:`LONG_JOB_S` seconds says how it ended through the system tray (QSystemTrayIcon) when the
desktop has one, else in the main window's status bar, and always flashes the window's taskbar
entry (QApplication.alert).  Short jobs stay quiet.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QApplication, QMainWindow, QSystemTrayIcon

from app.core.jobs import format_duration
from app.gui.job_queue import JobQueue, JobRecord

LONG_JOB_S = 60.0


def notice_text(record: JobRecord) -> tuple[str, str]:
    """(title, text) of the notice for an ended job, in the lab's words."""
    overall = record.overall
    took = format_duration(record.elapsed())
    if record.status == "finished":
        what = f"{overall.items} {overall.noun}{'s' if overall.items != 1 else ''}" if overall.items and overall.noun else ""
        return "Job finished", f"{record.title}: finished{' ' + what if what else ''} in {took}."
    if record.status == "cancelled":
        return "Job cancelled", f"{record.title}: cancelled after {took}."
    reason = f": {record.message}" if record.message else ""
    return "Job failed", f"{record.title} stopped after {took}{reason}"


class JobNotice(QObject):
    """Watches a :class:`JobQueue` and announces each long job's end (see the module text)."""

    def __init__(self, queue: JobQueue, window: QMainWindow, tray: Any = None,
                 long_job_s: float = LONG_JOB_S) -> None:
        super().__init__(window)
        self.window = window
        self.long_job_s = long_job_s
        self.tray = tray if tray is not None else self._make_tray()
        self.shown: list[tuple[str, str]] = []
        for signal in (queue.succeeded, queue.failed, queue.cancelled):
            signal.connect(self.job_ended)

    def _make_tray(self) -> QSystemTrayIcon | None:
        """A tray icon when the desktop has a tray that shows messages, else None."""
        if not QSystemTrayIcon.isSystemTrayAvailable() or not QSystemTrayIcon.supportsMessages():
            return None
        tray = QSystemTrayIcon(self.window.windowIcon(), self)
        tray.setToolTip("Stagescope")
        return tray

    def job_ended(self, record: JobRecord) -> None:
        """Announce ``record``'s end if it ran long enough to have been left alone."""
        if record.elapsed() < self.long_job_s:
            return
        title, text = notice_text(record)
        self.shown.append((title, text))
        if self.tray is not None:
            self.tray.show()
            icon = QSystemTrayIcon.MessageIcon.Information if record.status == "finished" \
                else QSystemTrayIcon.MessageIcon.Warning
            self.tray.showMessage(title, text, icon, 0)
        else:
            self.window.statusBar().showMessage(text)  # stays until the next message
        QApplication.alert(self.window)
