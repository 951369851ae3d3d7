"""The training wizard's pages: pipeline, data (sources and split), parameters, training curves, result."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFileDialog, QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QProgressBar, QPushButton,
    QScrollArea, QSpinBox, QTableWidget, QTableWidgetItem, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWizardPage,
)

from app.gui.forms import DataclassForm, jsonable_params
from app.gui.theme import WARNING_STYLE
from app.gui.training_sources import (
    SPLIT_FIELDS, class_counts, nothing_found_text, project_sources, zero_metrics,
)
from app.pipelines.registry import TrainingSource

if TYPE_CHECKING:
    from app.core.settings import Settings
    from app.gui.training_sources import Trainer

class WizardApi(Protocol):
    """What the pages use of the training wizard (:class:`app.gui.training_wizard.TrainingWizard`, which
    imports this module): its inputs, the training's state and its few actions."""

    project: Any
    settings: Settings
    trainers: dict[str, Trainer]
    params: Any
    out_dir: Path | None
    result_dir: Path | None

    def trainer(self) -> Trainer | None: ...

    def start(self, resume: bool = False) -> Any: ...

    def cancel(self) -> None: ...

    def result_card(self) -> Any: ...

    def save_model(self) -> Path | None: ...


NO_PRETRAINED = ("Networks start from random weights, from a model of your library (init_from: fine-tuning, the "
                 "quickest way to teach a model your own sections), or, where a trainer offers it, from published "
                 "ImageNet / COCO weights (pretrained), fetched once when your computer is online.")


class PipelinePage(QWizardPage):
    def __init__(self, wizard: WizardApi) -> None:
        super().__init__()
        self.setTitle("What to train")
        self.w = wizard
        self.list = QListWidget()
        for name, trainer in wizard.trainers.items():
            item = QListWidgetItem(f"{trainer.title}  [{name}]")
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setToolTip(trainer.description)
            self.list.addItem(item)
        self.list.currentRowChanged.connect(lambda _row: self.completeChanged.emit())
        self.list.currentRowChanged.connect(self._describe)
        self.description = QLabel("")
        self.description.setWordWrap(True)
        note = QLabel(NO_PRETRAINED)
        note.setWordWrap(True)
        layout = QVBoxLayout(self)
        if not wizard.trainers:
            empty = QLabel("No pipeline of this build offers training from the desktop app yet. "
                           "Use the command line, e.g. `stagescope stagetool train ...`.")
            empty.setWordWrap(True)
            layout.addWidget(empty)
        layout.addWidget(self.list)
        layout.addWidget(self.description)
        layout.addWidget(note)
        if wizard.trainers:
            self.list.setCurrentRow(0)

    def _describe(self, _row: int) -> None:
        item = self.list.currentItem()
        name = item.data(Qt.ItemDataRole.UserRole) if item is not None else None
        trainer = self.w.trainers.get(name)
        self.description.setText(self.w.preset_notes.get(name) or (trainer.description if trainer else ""))

    def isComplete(self) -> bool:  # noqa: N802 - Qt's name
        return self.list.currentItem() is not None


class DataPage(QWizardPage):
    def __init__(self, wizard: WizardApi) -> None:
        super().__init__()
        self.setTitle("Training data")
        self.setSubTitle("Annotated images, corrected predictions of earlier runs, or imported COCO / GeoJSON files.")
        self.w = wizard
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Source", "Image / file"])
        self.tree.itemChanged.connect(self._changed)
        self.add_button = QPushButton("Import annotation files...")
        self.add_button.clicked.connect(self._import_files)
        self.split = QSpinBox()
        self.split.setRange(0, 50)
        self.split.setValue(20)
        self.split.setSuffix(" % for validation")
        self.counts = QLabel("")
        self.counts.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.add_button)
        row.addStretch(1)
        row.addWidget(QLabel("Split:"))
        row.addWidget(self.split)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tree, 1)
        layout.addLayout(row)
        layout.addWidget(self.counts)
        self.sources: list[TrainingSource] = []
        for source in project_sources(wizard.project):
            self.add_source(source, checked=True)

    def add_source(self, source: TrainingSource, checked: bool = True) -> None:
        labels = {"annotations": "annotated image", "corrected": "corrected predictions", "file": "imported file"}
        text = source.image if source.kind != "file" else str(source.path)
        if source.kind == "corrected":
            text += f"  (run {source.run_folder.name})"
        item = QTreeWidgetItem([labels[source.kind], text])
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(0, Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        item.setData(0, Qt.ItemDataRole.UserRole, len(self.sources))
        self.sources.append(source)
        self.tree.addTopLevelItem(item)
        self._changed()

    def _import_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Annotation files", self.w.settings.last_folder("annotations"),
                                                "Annotations (*.json *.geojson);;All files (*)")
        for file in files:
            self.w.settings.remember_folder("annotations", file)
            self.add_source(TrainingSource("file", None, Path(file)))

    def tick_only(self, sources: list[TrainingSource], same: Any) -> None:
        """Tick exactly ``sources`` (``same(a, b)`` compares two), adding those not listed yet."""
        for source in sources:
            if not any(same(source, known) for known in self.sources):
                self.add_source(source, checked=True)
        self.tree.blockSignals(True)
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            known = self.sources[item.data(0, Qt.ItemDataRole.UserRole)]
            wanted = any(same(known, source) for source in sources)
            item.setCheckState(0, Qt.CheckState.Checked if wanted else Qt.CheckState.Unchecked)
        self.tree.blockSignals(False)
        self._changed()

    def chosen(self) -> list[TrainingSource]:
        out = []
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.checkState(0) == Qt.CheckState.Checked:
                out.append(self.sources[item.data(0, Qt.ItemDataRole.UserRole)])
        return out

    def _changed(self, *_: Any) -> None:
        counts = class_counts(self.chosen())
        total = sum(counts.values())
        text = ", ".join(f"{k}: {v}" for k, v in counts.items())
        self.counts.setText(f"{len(self.chosen())} source(s), {total} objects" + (f" ({text})" if text else ""))
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802
        return bool(self.chosen())


class ParamsPage(QWizardPage):
    def __init__(self, wizard: WizardApi) -> None:
        super().__init__()
        self.setTitle("Parameters")
        self.setSubTitle("Defaults suit the pipeline; the time per epoch is estimated once training starts.")
        self.w = wizard
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.note)
        layout.addWidget(self.scroll)
        self.form: DataclassForm | None = None

    def initializePage(self) -> None:  # noqa: N802
        trainer = self.w.trainer()
        remembered = self.w.settings.pipeline_params.get(f"train:{trainer.model_pipeline}")
        preset = self.w.preset_values.get(trainer.model_pipeline)
        if preset is not None:  # "Train on my corrections": the fine-tune start wins over the last values typed
            remembered = {**(remembered or {}), **preset}
        note = self.w.preset_notes.get(trainer.model_pipeline, "")
        self.note.setText(note)
        self.note.setVisible(bool(note))
        # the validation share is chosen once, on the Data page; the trainer gets it from there
        self.form = DataclassForm(trainer.params, remembered, hidden=SPLIT_FIELDS)
        self.scroll.setWidget(self.form)

    def validatePage(self) -> bool:  # noqa: N802
        try:
            self.w.params = self.form.values()
        except ValueError as error:
            self.setSubTitle(str(error))
            return False
        self.w.settings.pipeline_params[f"train:{self.w.trainer().model_pipeline}"] = jsonable_params(self.w.params)
        return True


class TrainPage(QWizardPage):
    def __init__(self, wizard: WizardApi) -> None:
        super().__init__()
        self.setTitle("Training")
        self.w = wizard
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(lambda: wizard.start(resume=False))
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue from the last checkpoint")
        self.resume_button.clicked.connect(lambda: wizard.start(resume=True))
        self.cancel_button = QPushButton("Cancel training")
        self.cancel_button.clicked.connect(wizard.cancel)
        self.progress = QProgressBar()
        self.status = QLabel("Press Start. Training runs in the background; you can keep working.")
        self.status.setWordWrap(True)
        self.estimate = QLabel("")
        self.before = QLabel("")  # the estimate said before Start, from earlier trainings
        self.before.setWordWrap(True)
        self.plot = pg.PlotWidget(title="Loss and validation metrics")
        self.plot.addLegend()
        self.plot.setLabel("bottom", "step")
        buttons = QHBoxLayout()
        for button in (self.start_button, self.resume_button, self.cancel_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.before)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.estimate)
        layout.addWidget(self.plot, 1)
        self.curves: dict[str, Any] = {}
        self.set_running(False)

    def initializePage(self) -> None:  # noqa: N802
        from app.gui.training_estimate import cards_for, estimate

        trainer, params = self.w.trainer(), self.w.params
        if trainer is None or params is None:
            return
        self.w.estimate = estimate(params, cards_for(trainer.model_pipeline, getattr(params, "init_from", "") or ""))
        self.before.setText(self.w.estimate.text())

    def set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.resume_button.setEnabled(not running and self.w.out_dir is not None)
        self.cancel_button.setEnabled(running)
        self.completeChanged.emit()

    def add_point(self, series: str, x: float, y: float) -> None:
        curve = self.curves.get(series)
        if curve is None:
            colour = pg.intColor(len(self.curves), hues=8)
            curve = self.plot.plot([], [], pen=pg.mkPen(colour, width=2), name=series,
                                   symbol="o" if series.startswith("val") else None, symbolSize=5)
            curve.points = ([], [])
            self.curves[series] = curve
        xs, ys = curve.points
        xs.append(x)
        ys.append(y)
        curve.setData(xs, ys)

    def isComplete(self) -> bool:  # noqa: N802
        return self.w.result_dir is not None


class ResultPage(QWizardPage):
    def __init__(self, wizard: WizardApi) -> None:
        super().__init__()
        self.setTitle("Result")
        self.w = wizard
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["Metric", "Value"])
        self.table.setColumnWidth(0, 200)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.name = QLineEdit()
        self.save_button = QPushButton("Save to model library")
        self.save_button.clicked.connect(wizard.save_model)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.warning = QLabel("")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet(WARNING_STYLE)
        self.warning.setVisible(False)
        row = QHBoxLayout()
        row.addWidget(QLabel("Name"))
        row.addWidget(self.name, 1)
        row.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.warning)
        layout.addLayout(row)
        layout.addWidget(self.status)

    def initializePage(self) -> None:  # noqa: N802
        card = self.w.result_card()
        rows = []
        if card is not None:
            for split, values in (card.metrics or {}).items():
                if isinstance(values, dict):
                    rows += [(f"{split} {k}", v) for k, v in values.items()]
                else:
                    rows.append((split, values))
            self.name.setText(card.name)
        self.table.setRowCount(len(rows))
        for i, (key, value) in enumerate(rows):
            self.table.setItem(i, 0, QTableWidgetItem(str(key)))
            self.table.setItem(i, 1, QTableWidgetItem(f"{value:.4g}" if isinstance(value, float) else str(value)))
        zero = zero_metrics(card.metrics if card is not None else {})
        self.warning.setText(nothing_found_text(zero) if zero else "")
        self.warning.setVisible(bool(zero))
