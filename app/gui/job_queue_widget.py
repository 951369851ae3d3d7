"""The job dock: one row per job of the :class:`app.gui.job_queue.JobQueue` with status, progress bar,
time left and message; cancel, and a details log for failures."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView, QDialog, QDialogButtonBox, QHBoxLayout, QHeaderView, QLabel, QPlainTextEdit,
    QProgressBar, QPushButton, QSizePolicy, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget,
)

from app.gui.job_queue import JobQueue, JobRecord
from app.gui.theme import FAILURE_COLOUR, PROGRESS_BAR_HEIGHT


def format_seconds(seconds: float | None) -> str:
    """``1 h 02 min``, ``3 min 05 s``, ``12 s``; empty when unknown."""
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


class JobQueueWidget(QWidget):
    """The job dock: one row per job with status, progress bar, time left and message."""

    COLUMNS = ("Job", "Status", "Progress", "Time left", "Message")

    def __init__(self, queue: JobQueue, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.queue = queue
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(self.COLUMNS)
        self.tree.setRootIsDecorated(False)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.tree.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        self.tree.setColumnWidth(0, 260)
        self.tree.setColumnWidth(1, 260)
        self.tree.setColumnWidth(2, 160)
        self.tree.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # a cut title keeps its start and its image name
        self.tree.itemDoubleClicked.connect(lambda item, _column: self.show_details(self._record(item)))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Cancel the selected job (Ctrl+.)")
        self.cancel_button.clicked.connect(self.cancel_selected)
        self.cancel_all_button = QPushButton("Cancel all")
        self.cancel_all_button.clicked.connect(queue.cancel_all)
        self.details_button = QPushButton("Details...")
        self.details_button.clicked.connect(lambda: self.show_details(self.selected()))
        self.clear_button = QPushButton("Clear finished")
        self.clear_button.clicked.connect(self.clear_finished)
        buttons = QHBoxLayout()
        for button in (self.cancel_button, self.cancel_all_button, self.details_button, self.clear_button):
            buttons.addWidget(button)
        self.summary = QLabel("No jobs")
        # the running job's whole line ("Section 3 of 20 · ..."); a long one is cut, never widens the dock
        self.summary.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.summary.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        buttons.addWidget(self.summary, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(buttons)
        layout.addWidget(self.tree)
        self._items: dict[int, QTreeWidgetItem] = {}
        self._bars: dict[int, QProgressBar] = {}
        queue.changed.connect(self.update_record)
        self._timer = QTimer(self)  # time left ticks even between progress events
        self._timer.timeout.connect(self._tick)
        self._timer.start(1000)

    def _record(self, item: QTreeWidgetItem | None) -> JobRecord | None:
        if item is None:
            return None
        job_id = item.data(0, Qt.ItemDataRole.UserRole)
        return next((r for r in self.queue.records if r.id == job_id), None)

    def selected(self) -> JobRecord | None:
        """The selected job, or the running one when nothing is selected."""
        return self._record(self.tree.currentItem()) or self.queue.running

    def cancel_selected(self) -> None:
        record = self.selected()
        if record is not None:
            self.queue.cancel(record)

    def clear_finished(self) -> None:
        self.queue.clear_finished()
        keep = {r.id for r in self.queue.records}
        for job_id in [j for j in self._items if j not in keep]:
            item = self._items.pop(job_id)
            self._bars.pop(job_id, None)
            self.tree.takeTopLevelItem(self.tree.indexOfTopLevelItem(item))
        self._update_summary()

    def update_record(self, record: JobRecord) -> None:
        """Show the current state of one job (adds its row on first sight)."""
        item = self._items.get(record.id)
        if item is None:
            item = QTreeWidgetItem([record.title, "", "", "", ""])
            item.setData(0, Qt.ItemDataRole.UserRole, record.id)
            item.setToolTip(0, record.title)
            self.tree.addTopLevelItem(item)
            self._fit_title(record.title)
            bar = QProgressBar()
            bar.setMaximumHeight(PROGRESS_BAR_HEIGHT)
            self.tree.setItemWidget(item, 2, bar)
            self._items[record.id], self._bars[record.id] = item, bar
        bar = self._bars[record.id]
        fraction = record.fraction()
        if record.status == "partly failed":
            bar.setRange(0, 100)
            bar.setValue(100)
            bar.setFormat("partly failed")
            bar.setStyleSheet(f"QProgressBar::chunk {{ background: {FAILURE_COLOUR}; }}")  # not the colour of success
        elif record.status == "finished":
            bar.setRange(0, 100)
            bar.setValue(100)
        elif record.status == "running" and fraction is None:
            bar.setRange(0, 0)  # busy indicator
        else:
            bar.setRange(0, 100)
            bar.setValue(int(100 * (fraction or 0)))
        status = record.progress_text() if record.status != "running" else \
            replace(record.overall, seconds_left=None).text() or "running"
        item.setText(1, status)
        item.setToolTip(1, record.progress_text())
        bar.setToolTip(record.progress_text())
        item.setText(3, format_seconds(record.seconds_left()))
        item.setText(4, record.message)
        item.setToolTip(4, record.details if record.problems else record.message)
        if record.status in ("failed", "partly failed"):
            for column in range(len(self.COLUMNS)):
                item.setForeground(column, QBrush(QColor(FAILURE_COLOUR)))
        self._update_summary()

    def _fit_title(self, title: str) -> None:
        """Widen the Job column so a title shows whole at the dock's normal width (up to half of it)."""
        wanted = self.tree.fontMetrics().horizontalAdvance(title) + 24
        limit = max(260, self.tree.viewport().width() // 2, 420)
        if self.tree.columnWidth(0) < wanted:
            self.tree.setColumnWidth(0, min(wanted, limit))

    def _tick(self) -> None:
        for record in self.queue.running_jobs():
            if record.id in self._items:
                self._items[record.id].setText(3, format_seconds(record.seconds_left()))
        self._update_summary()

    def _update_summary(self) -> None:
        active = self.queue.active_count()
        failed = sum(1 for r in self.queue.records if r.status in ("failed", "partly failed"))
        text = f"{active} active" if active else "Idle"
        if failed:
            text += f", {failed} failed"
        running = self.queue.running
        if running is not None and running.status == "running" and running.progress is not None:
            text = f"{running.title}: {running.progress_text()}  ({text})"
        self.summary.setText(text)
        self.summary.setToolTip(text)

    def show_details(self, record: JobRecord | None) -> QDialog | None:
        """A dialog with the job's message, timings and details log."""
        if record is None:
            return None
        dialog = QDialog(self)
        dialog.setWindowTitle(f"Job: {record.title}")
        text = QPlainTextEdit()
        text.setReadOnly(True)
        lines = [f"Job: {record.title}", f"Status: {record.status}", f"Elapsed: {format_seconds(record.elapsed())}"]
        if record.message:
            lines.append(f"Message: {record.message}")
        if record.result is not None:
            lines.append(f"Result: {record.result}")
        if record.details:
            lines += ["", record.details]
        elif record.worker is not None and record.worker.log_lines:
            lines += ["", *record.worker.log_lines[-200:]]
        text.setPlainText("\n".join(lines))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(dialog.reject)
        layout = QVBoxLayout(dialog)
        layout.addWidget(text)
        layout.addWidget(buttons)
        dialog.resize(700, 400)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog
