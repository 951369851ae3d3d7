"""The report exporter: choose runs and sections, set antibody thresholds with a preview, write the workbook.

Sections are read from the project's runs (objects JSON with the run's edits applied, so curation
counts).  Each antibody's threshold T starts from the value the analysis used (given or
suggested) and can be changed here: a histogram of the cells' mean intensities with T as a
draggable line, and the section's antibody channel with the cells that are positive at T.  Sections,
documents, thresholds and jobs come from :mod:`app.gui.report_sections` (no Qt).  The
workbook is written by the Stagetool report code (app/pipelines/stagetool/report_excel.py with the tables
of app/pipelines/stagetool/tables.py), looked up when needed, as a job in the queue; the folder can
be opened afterwards.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout,
    QLabel,
    QLineEdit, QMessageBox, QPushButton, QSplitter, QTableWidget, QTableWidgetItem, QTreeWidget, QTreeWidgetItem,
    QVBoxLayout, QWidget,
)

from app.core.errors import UserError
from app.core.settings import Settings
from app.gui.report_sections import (
    SectionEntry, add_antibody_job, antibodies_of, cell_measures, curated_document, duplicated_sections,
    find_report_writer, positive_mask, preview_task, report_job, section_entries, suggested_threshold,
)
from app.gui.theme import THRESHOLD_COLOUR
from app.gui.workers import BackgroundRunner

class ReportExporter(QDialog):
    """Choose sections, set thresholds with a preview, write the workbook into the project's reports."""

    report_written = Signal(object)  # Path

    def __init__(self, project: Any, settings: Settings, parent: QWidget | None = None, queue: Any = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export report")
        self.project = project
        self.settings = settings
        self.queue = queue if queue is not None else getattr(parent, "queue", None)
        self.entries = section_entries(project)
        self.docs: dict[SectionEntry, dict[str, Any]] = {}
        self.thresholds: dict[str, float] = {}
        self.written: Path | None = None
        self.runner = BackgroundRunner(self, "stagescope-report")
        self.runner.done.connect(self._preview_done, Qt.ConnectionType.QueuedConnection)

        self.sections = QTreeWidget()
        self.sections.setHeaderLabels(["Run / section"])
        self.sections.itemChanged.connect(self._sections_changed)
        self.sections.currentItemChanged.connect(self._preview_current)
        self._fill_sections()

        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Antibody", "Threshold T", ""])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.currentCellChanged.connect(lambda *_: self._preview_current(self.sections.currentItem()))
        self.histogram = pg.PlotWidget(title="Cell mean intensities")
        self.histogram.setMaximumHeight(180)
        self.hist_curve = pg.PlotCurveItem(x=np.array([0.0, 1.0]), y=np.array([0.0]), stepMode="center",
                                           fillLevel=0, brush=(120, 160, 255, 120))
        self.histogram.addItem(self.hist_curve)
        self.threshold_line = pg.InfiniteLine(angle=90, movable=True, pen=pg.mkPen(THRESHOLD_COLOUR, width=2))
        self.threshold_line.sigPositionChangeFinished.connect(self._line_moved)
        self.histogram.addItem(self.threshold_line)
        self.image_plot = pg.PlotWidget(title="Positive cells on the antibody channel")
        self.image_plot.setAspectLocked(True)
        self.image_plot.invertY(True)
        self.image_item = pg.ImageItem()
        self.image_plot.addItem(self.image_item)
        self.positive_points = pg.ScatterPlotItem(size=6, pen=pg.mkPen(THRESHOLD_COLOUR), brush=None, pxMode=True)
        self.image_plot.addItem(self.positive_points)
        self.preview_label = QLabel("")
        self.preview_label.setWordWrap(True)

        self.name_edit = QLineEdit(time.strftime("report-%Y%m%d-%H%M.xlsx"))
        self.write_button = QPushButton("Write workbook")
        self.write_button.setDefault(True)
        self.write_button.clicked.connect(self.write)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        if find_report_writer() is None:
            self.write_button.setEnabled(False)
            self.status.setText("The Excel report writer is not part of this build.")
        elif not self.entries:
            self.write_button.setEnabled(False)
            self.status.setText("No Stagetool results yet: the workbook reports Stagetool runs (tubule stages and "
                                "cell types). Run Stagetool on testis sections first.")

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addWidget(QLabel("Sections (ticked ones go into the workbook)"))
        left_layout.addWidget(self.sections)
        thresholds = QGroupBox("Antibody thresholds")
        thresholds_layout = QVBoxLayout(thresholds)
        thresholds_layout.addWidget(self.table)
        thresholds_layout.addWidget(QLabel("Positive: mean > T and at least 65% of its pixels > T/2."))
        self.add_channel = QComboBox()
        self.add_channel.setToolTip("A channel of the ticked sections that was not measured during the analysis")
        self.add_button = QPushButton("Measure antibody")
        self.add_button.setToolTip("Measure this channel in the saved cells of the ticked sections (no new analysis)")
        self.add_button.clicked.connect(lambda: self.add_antibody(self.add_channel.currentText()))
        add_row = QHBoxLayout()
        add_row.addWidget(QLabel("Add channel"))
        add_row.addWidget(self.add_channel, 1)
        add_row.addWidget(self.add_button)
        thresholds_layout.addLayout(add_row)
        left_layout.addWidget(thresholds)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.addWidget(self.histogram)
        right_layout.addWidget(self.image_plot, 1)
        right_layout.addWidget(self.preview_label)
        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(right)
        out = QFormLayout()
        out.addRow("Workbook name", self.name_edit)
        bottom = QHBoxLayout()
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.write_button)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        bottom.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter, 1)
        layout.addLayout(out)
        layout.addLayout(bottom)
        self.resize(1000, 700)
        self._load_docs()
        if self.entries:
            first = self.sections.topLevelItem(0)
            self.sections.setCurrentItem(first.child(0) if first.childCount() else first)

    # ------------------------------------------------------------------ sections

    def _fill_sections(self) -> None:
        self.sections.blockSignals(True)
        runs: dict[str, QTreeWidgetItem] = {}
        newest = self.entries[0].run_id if self.entries else None
        for index, entry in enumerate(self.entries):
            parent = runs.get(entry.run_id)
            if parent is None:
                parent = QTreeWidgetItem(self.sections, [f"{entry.pipeline} · {entry.run_id}"])
                parent.setFlags(parent.flags() | Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsAutoTristate)
                parent.setExpanded(True)
                runs[entry.run_id] = parent
            item = QTreeWidgetItem(parent, [entry.image])
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            checked = entry.run_id == newest
            item.setCheckState(0, Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
            item.setData(0, Qt.ItemDataRole.UserRole, index)
        self.sections.blockSignals(False)

    def chosen(self) -> list[SectionEntry]:
        """The ticked sections."""
        out = []
        for i in range(self.sections.topLevelItemCount()):
            parent = self.sections.topLevelItem(i)
            for j in range(parent.childCount()):
                item = parent.child(j)
                if item.checkState(0) == Qt.CheckState.Checked:
                    out.append(self.entries[item.data(0, Qt.ItemDataRole.UserRole)])
        return out

    def set_chosen(self, chosen: list[tuple[str, str]]) -> None:
        """Tick exactly the (run id, image) pairs given."""
        for i in range(self.sections.topLevelItemCount()):
            parent = self.sections.topLevelItem(i)
            for j in range(parent.childCount()):
                item = parent.child(j)
                entry = self.entries[item.data(0, Qt.ItemDataRole.UserRole)]
                state = Qt.CheckState.Checked if (entry.run_id, entry.image) in chosen else Qt.CheckState.Unchecked
                item.setCheckState(0, state)

    def _sections_changed(self, item: QTreeWidgetItem | None = None, *_: Any) -> None:
        """Ticking a section in one run unticks the same section in the other runs (it would count twice)."""
        index = item.data(0, Qt.ItemDataRole.UserRole) if item is not None else None
        if index is not None and item.checkState(0) == Qt.CheckState.Checked:
            image = self.entries[index].image
            for i in range(self.sections.topLevelItemCount()):
                parent = self.sections.topLevelItem(i)
                for j in range(parent.childCount()):
                    other = parent.child(j)
                    if other is not item and other.checkState(0) == Qt.CheckState.Checked \
                            and self.entries[other.data(0, Qt.ItemDataRole.UserRole)].image == image:
                        other.setCheckState(0, Qt.CheckState.Unchecked)
        self._load_docs()

    def _load_docs(self) -> None:
        """Read the chosen sections (small JSON files) and list their antibodies."""
        for entry in self.chosen():
            if entry not in self.docs:
                try:
                    self.docs[entry] = curated_document(entry)
                except UserError as error:
                    self.status.setText(str(error))
        docs = [self.docs[e] for e in self.chosen() if e in self.docs]
        antibodies = antibodies_of(docs)
        self.table.setRowCount(len(antibodies))
        for row, (name, info) in enumerate(antibodies.items()):
            means, _qs = cell_measures(docs, name)
            threshold = self.thresholds.get(name) or info.get("threshold") or suggested_threshold(means) or 0.0
            self.thresholds[name] = float(threshold)
            self.table.setItem(row, 0, QTableWidgetItem(name))
            spin = QDoubleSpinBox()
            spin.setRange(0, 1e9)
            spin.setDecimals(2)
            spin.setValue(float(threshold))
            spin.valueChanged.connect(lambda value, n=name: self._set_threshold(n, value))
            self.table.setCellWidget(row, 1, spin)
            suggest = QPushButton("Suggest")
            suggest.setToolTip("Threshold suggested from the cells' means (Stagetool)")
            suggest.clicked.connect(lambda _=False, n=name, s=spin: self._suggest(n, s))
            self.table.setCellWidget(row, 2, suggest)
        if antibodies and self.table.currentRow() < 0:
            self.table.setCurrentCell(0, 0)
        self._fill_add_channels(antibodies)
        self.histogram.setVisible(bool(antibodies))
        self.image_plot.setTitle("Positive cells on the antibody channel" if antibodies else "Section (DAPI)")
        if not antibodies:
            self.preview_label.setText("These sections have no antibody channels: the workbook holds counts only.")
        self._update_preview()

    def _fill_add_channels(self, measured: dict[str, Any]) -> None:
        """Offer the ticked sections' channels that are not measured yet (DAPI and the like last)."""
        from app.pipelines.suitability import DNA_CHANNELS

        channels: list[str] = []
        for entry in self.chosen():
            try:
                names = self.project.image(entry.image).channels
            except UserError:
                continue
            channels += [c for c in names if c not in channels and c not in measured]
        channels.sort(key=lambda c: c.strip().lower() in DNA_CHANNELS)
        self.add_channel.clear()
        self.add_channel.addItems(channels)
        self.add_button.setEnabled(bool(channels))

    def add_antibody(self, channel: str) -> Any:
        """Measure ``channel`` (named after it) in the ticked sections' saved cells, then list it here."""
        entries = self.chosen()
        if not channel or not entries:
            self.status.setText("Tick sections and choose a channel to measure.")
            return None

        def measured(count: Any) -> None:
            self.docs.clear()
            self._load_docs()
            self.status.setText(f"{channel}: {count} cells measured; set its threshold, then write the workbook.")

        self.status.setText(f"Measuring {channel}...")
        if self.queue is None:
            from app.core.jobs import run

            try:
                count = run(add_antibody_job(self.project, entries, channel, channel))
            except UserError as error:
                self.status.setText(str(error))
                return None
            measured(count)
            return count
        return self.queue.submit(f"Measure {channel} in {len(entries)} section(s)",
                                 lambda: add_antibody_job(self.project, entries, channel, channel),
                                 kind="report", on_success=measured)

    # ------------------------------------------------------------------ thresholds and preview

    def current_antibody(self) -> str | None:
        row = self.table.currentRow()
        item = self.table.item(row, 0) if row >= 0 else None
        return item.text() if item is not None else None

    def _set_threshold(self, name: str, value: float) -> None:
        self.thresholds[name] = float(value)
        self._update_preview()

    def set_threshold(self, name: str, value: float) -> None:
        """Set T for an antibody (keeps the table in step)."""
        for row in range(self.table.rowCount()):
            if self.table.item(row, 0).text() == name:
                self.table.cellWidget(row, 1).setValue(value)
        self.thresholds[name] = float(value)
        self._update_preview()

    def _suggest(self, name: str, spin: QDoubleSpinBox) -> None:
        docs = [self.docs[e] for e in self.chosen() if e in self.docs]
        value = suggested_threshold(cell_measures(docs, name)[0])
        if value is not None:
            spin.setValue(value)

    def _line_moved(self) -> None:
        name = self.current_antibody()
        if name is not None:
            self.set_threshold(name, max(0.0, float(self.threshold_line.value())))

    def _preview_current(self, item: QTreeWidgetItem | None, _previous: Any = None) -> None:
        if item is None or item.data(0, Qt.ItemDataRole.UserRole) is None:
            return
        entry = self.entries[item.data(0, Qt.ItemDataRole.UserRole)]
        self._preview_entry = entry
        name = self.current_antibody()
        doc = self.docs.get(entry)
        channel = None
        if doc is not None and name is not None:
            info = antibodies_of([doc]).get(name, {})
            channel = info.get("channel_index")
        try:
            image_path = self.project.image_path(entry.image)
        except UserError:
            return
        self.runner.submit("preview", preview_task, entry, channel, Path(self.project.folder), image_path)

    def _preview_done(self, _key: Any, result: dict[str, Any]) -> None:
        self._preview = result
        picture = result["picture"]
        if picture is not None:
            lo, hi = np.percentile(picture[::4, ::4], [1, 99.5]) if picture.size else (0, 1)
            self.image_item.setImage(picture, levels=(float(lo), float(max(hi, lo + 1))))
            f = result["factor"]
            self.image_item.setRect(0, 0, picture.shape[1] * f, picture.shape[0] * f)
        self._update_preview()

    def _update_preview(self) -> None:
        name = self.current_antibody()
        docs = [self.docs[e] for e in self.chosen() if e in self.docs]
        if name is None:
            self.hist_curve.setData(x=np.array([0.0, 1.0]), y=np.array([0.0]))
            self.positive_points.setData([], [])
            return
        threshold = self.thresholds.get(name, 0.0)
        means, qs = cell_measures(docs, name)
        if len(means):
            counts, edges = np.histogram(means, bins=64)
            self.hist_curve.setData(x=edges, y=counts.astype(float))
        self.threshold_line.blockSignals(True)
        self.threshold_line.setValue(threshold)
        self.threshold_line.blockSignals(False)
        positive = positive_mask(means, qs, threshold) if len(means) else np.zeros(0, bool)
        if positive is None:
            self.preview_label.setText("Positivity preview needs the Stagetool pipeline.")
            return
        share = 100 * positive.mean() if len(positive) else 0.0
        self.preview_label.setText(f"{name}: {int(positive.sum())} of {len(means)} cells positive ({share:.1f}%) "
                                   f"at T = {threshold:.4g} in the ticked sections.")
        preview = getattr(self, "_preview", None)
        if preview is None:
            return
        cells = [c for c in preview["doc"].get("layers", {}).get("cells", [])
                 if ((c.get("antigen") or {}).get(name) or {}).get("mean") is not None]
        if cells:
            m = np.array([c["antigen"][name]["mean"] for c in cells], dtype=float)
            q = np.array([c["antigen"][name].get("q", c["antigen"][name]["mean"]) for c in cells], dtype=float)
            keep = positive_mask(m, q, threshold)
            centres = np.array([c.get("centroid") or [(c["box"][1] + c["box"][3]) / 2, (c["box"][0] + c["box"][2]) / 2]
                                for c in cells], dtype=float)[keep]
            self.positive_points.setData(x=centres[:, 1], y=centres[:, 0])
        else:
            self.positive_points.setData([], [])

    # ------------------------------------------------------------------ writing

    def output_path(self) -> Path:
        name = self.name_edit.text().strip() or "report.xlsx"
        if not name.lower().endswith(".xlsx"):
            name += ".xlsx"
        return self.project.report_path(name)

    def write(self) -> Any:
        """Write the workbook as a job (or at once without a queue); returns the job record or path."""
        writer = find_report_writer()
        entries = self.chosen()
        if writer is None:
            self.status.setText("The Excel report writer is not part of this build.")
            return None
        if not entries:
            self.status.setText("Tick at least one section.")
            return None
        twice = duplicated_sections(entries)
        if twice:
            image, runs = next(iter(twice.items()))
            self.status.setText(f"{image} is ticked in {len(runs)} runs ({', '.join(runs)}): tick it in one run "
                                "only, or it is counted twice.")
            return None
        try:
            path = self.output_path()
        except UserError as error:
            self.status.setText(str(error))
            return None
        thresholds = dict(self.thresholds)
        if self.queue is None:
            from app.core.jobs import run

            written = run(report_job(entries, thresholds, path, writer))
            self._written(written)
            return written
        self.status.setText(f"Writing {path.name}...")
        return self.queue.submit(f"Report {path.name}", lambda: report_job(entries, thresholds, path, writer),
                                 kind="report", on_success=self._written)

    def _written(self, path: Any) -> None:
        self.written = Path(path)
        self.status.setText(f"Wrote {self.written}")
        self.report_written.emit(self.written)
        box = QMessageBox(QMessageBox.Icon.Information, "Report written", f"Wrote {self.written}",
                          QMessageBox.StandardButton.Close, self)
        open_button = box.addButton("Open folder", QMessageBox.ButtonRole.ActionRole)
        open_button.clicked.connect(lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.written.parent))))
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        self._done_box = box

    def done(self, result: int) -> None:  # noqa: D102 - Qt's name
        self.runner.shutdown()
        super().done(result)
