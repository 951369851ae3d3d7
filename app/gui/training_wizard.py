"""The training wizard (QWizard): pipeline -> data -> parameters -> training with live curves -> result.

Training code belongs to the pipelines.  A pipeline offers training by listing ``trainers`` on its
registry spec (:class:`app.pipelines.registry.TrainerSpec`: ``model_pipeline``, ``title``, ``params``
(a dataclass; the form is built from it) and ``train(sources, params, out_dir, resume,
validation_fraction) -> Job[Path]`` that writes a model folder (card.json + weights.pt) and returns
it).  ``sources`` is a list of :class:`~app.pipelines.registry.TrainingSource`: images of the
project with annotations, corrected predictions (a run's results with the edits applied:
human-in-the-loop retraining), or imported COCO / QuPath GeoJSON files.  The job's progress drives
the curves: numeric values in ``Progress.data`` and a "loss X" in the message.  Training runs in
the job queue (worker thread), can be cancelled and resumed (the trainer checkpoints into
``out_dir``), and the result is saved into the user's model library under a chosen name.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFileDialog, QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QMessageBox, QProgressBar, QPushButton,
    QScrollArea, QSpinBox, QTableWidget, QTableWidgetItem, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget,
    QWizard, QWizardPage,
)

from app.core.atomic import atomic_write_json
from app.core.errors import UserError
from app.core.jobs import Progress
from app.core.paths import user_models_dir
from app.core.settings import Settings
from app.gui.forms import DataclassForm, jsonable_params
from app.pipelines.registry import TrainerSpec, TrainingSource

SPLIT_FIELDS = ("val_fraction", "validation_fraction")  # set by the Data page's split, not the form
# validation metrics whose value 0 means the model found nothing (any split, any case)
USELESS_AT_ZERO = ("ap50", "dice", "f1", "mean_f1", "object_f1", "pixel_f1", "iou", "mean_iou")
NO_PRETRAINED = ("No pretrained weights can be downloaded here: networks start from random weights "
                 "(or from a model of your library), so give them enough annotated data and epochs.")
_LOSS = re.compile(r"\bloss\s*[=:]?\s*([0-9.eE+-]+)")


Trainer = TrainerSpec  # the wizard's name for a pipeline's training offer


def _as_trainer(item: Any, key: str | None = None) -> Trainer | None:
    if isinstance(item, Trainer):
        return item
    if isinstance(item, dict):
        item = type("T", (), item)
    train = getattr(item, "train", None)
    params = getattr(item, "params", None)
    if train is None or params is None:
        return None
    mp = getattr(item, "model_pipeline", key)
    return Trainer(mp, getattr(item, "title", mp), params, train, getattr(item, "description", ""))


def find_trainers() -> dict[str, Trainer]:
    """Trainers the installed pipelines offer on their registry specs, by model pipeline name."""
    from app.pipelines import registry

    found: dict[str, Trainer] = {}
    for spec in registry.pipelines().values():
        trainers = getattr(spec, "trainers", None) or {}
        offers = trainers.items() if isinstance(trainers, dict) else [(None, t) for t in trainers]
        for key, item in offers:
            trainer = _as_trainer(item, key)
            if trainer is not None and trainer.model_pipeline:
                found[trainer.model_pipeline] = trainer
    return found


def project_sources(project: Any) -> list[TrainingSource]:
    """Training data the project holds: annotated images and corrected predictions (runs with edits)."""
    from app.core.edits import read_edits
    from app.gui.run_files import base_objects_file

    sources = []
    if project is None:
        return sources
    for entry in project.images():
        path = project.annotations_dir / f"{entry.name}.json"
        if path.is_file():
            sources.append(TrainingSource("annotations", entry.name, path, image_path=project.image_path(entry.name)))
    for run in reversed(project.runs()):
        edited = {e.get("image") for e in read_edits(run.folder)} if (run.folder / "edits.json").exists() else set()
        for image in run.results:
            path = base_objects_file(run, image)
            if path is not None and (image in edited or None in edited):
                sources.append(TrainingSource("corrected", image, path, Path(run.folder),
                                              _image_path(project, image)))
    return sources


def _image_path(project: Any, image: str) -> Path | None:
    """The project's file of ``image``, or None when the image was removed from the project."""
    try:
        return project.image_path(image)
    except UserError:
        return None


def class_counts(sources: list[TrainingSource]) -> dict[str, int]:
    """Objects per class in the sources (annotation files through app.core.annotations when present)."""
    counts: dict[str, int] = {}

    def add(name: Any) -> None:
        counts[str(name)] = counts.get(str(name), 0) + 1

    for source in sources:
        try:
            if source.kind == "corrected":
                from app.core.edits import apply_edits, edits_for_image, read_edits
                from app.core.results import read_objects

                edits = edits_for_image(read_edits(source.run_folder), source.image)
                doc = apply_edits(read_objects(source.path), edits)
                for objects in doc.get("layers", {}).values():
                    for obj in objects:
                        if not obj.get("excluded"):
                            add(obj.get("class"))
            else:
                for name in _annotation_classes(source.path):
                    add(name)
        except (UserError, OSError, ValueError, KeyError):
            continue
    return dict(sorted(counts.items()))


def _annotation_classes(path: Path) -> list[str]:
    """Class of every object in a COCO JSON or QuPath GeoJSON file."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and "annotations" in data:
        names = {c["id"]: c.get("name", str(c["id"])) for c in data.get("categories", [])}
        return [names.get(a.get("category_id"), str(a.get("category_id"))) for a in data["annotations"]]
    features = data.get("features", []) if isinstance(data, dict) else data
    out = []
    for feature in features:
        props = feature.get("properties", {}) or {}
        cls = props.get("classification") or {}
        out.append(cls.get("name") if isinstance(cls, dict) else props.get("name", "object"))
    return out


# ====================================================================== pages


class PipelinePage(QWizardPage):
    def __init__(self, wizard: TrainingWizard) -> None:
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
        trainer = self.w.trainers.get(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None
        self.description.setText(trainer.description if trainer else "")

    def isComplete(self) -> bool:  # noqa: N802 - Qt's name
        return self.list.currentItem() is not None


class DataPage(QWizardPage):
    def __init__(self, wizard: TrainingWizard) -> None:
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
    def __init__(self, wizard: TrainingWizard) -> None:
        super().__init__()
        self.setTitle("Parameters")
        self.setSubTitle("Defaults suit the pipeline; the time per epoch is estimated once training starts.")
        self.w = wizard
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.scroll)
        self.form: DataclassForm | None = None

    def initializePage(self) -> None:  # noqa: N802
        trainer = self.w.trainer()
        remembered = self.w.settings.pipeline_params.get(f"train:{trainer.model_pipeline}")
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
    def __init__(self, wizard: TrainingWizard) -> None:
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
        self.plot = pg.PlotWidget(title="Loss and validation metrics")
        self.plot.addLegend()
        self.plot.setLabel("bottom", "step")
        buttons = QHBoxLayout()
        for button in (self.start_button, self.resume_button, self.cancel_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.estimate)
        layout.addWidget(self.plot, 1)
        self.curves: dict[str, Any] = {}
        self.set_running(False)

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
    def __init__(self, wizard: TrainingWizard) -> None:
        super().__init__()
        self.setTitle("Result")
        self.w = wizard
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["Metric", "Value"])
        self.name = QLineEdit()
        self.save_button = QPushButton("Save to model library")
        self.save_button.clicked.connect(wizard.save_model)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.warning = QLabel("")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #ff8a65; font-weight: bold")
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


def zero_metrics(metrics: dict[str, Any] | None) -> list[str]:
    """Validation metrics at 0 that mean the model finds nothing, e.g. ``["val AP50 = 0"]``."""
    found = []
    for split, values in (metrics or {}).items():
        items = values.items() if isinstance(values, dict) else [(split, values)]
        for key, value in items:
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and str(key).lower() in USELESS_AT_ZERO and abs(float(value)) < 1e-9:
                found.append(f"{split} {key} = 0" if isinstance(values, dict) else f"{key} = 0")
    return found


def nothing_found_text(zero: list[str]) -> str:
    return (f"Warning: {', '.join(zero)} on the validation data: this model finds nothing there. Train longer, "
            "with more annotations, or check the annotations' classes before using it.")


# ====================================================================== wizard


class TrainingWizard(QWizard):
    """Train a model from project data; see the module docstring."""

    model_saved = Signal(object)  # Path of the model folder in the library

    def __init__(self, project: Any, settings: Settings, queue: Any, parent: QWidget | None = None,
                 trainers: dict[str, Trainer] | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Train a model")
        self.project = project
        self.settings = settings
        self.queue = queue
        self.confirm = self._ask  # tests replace it (a modal box would block them)
        self.trainers = trainers if trainers is not None else find_trainers()
        self.params: Any = None
        self.out_dir: Path | None = None
        self.result_dir: Path | None = None
        self.saved_dir: Path | None = None
        self.record: Any = None
        self._last_event: Progress | None = None
        self._started = 0.0
        self.pipeline_page = PipelinePage(self)
        self.data_page = DataPage(self)
        self.params_page = ParamsPage(self)
        self.train_page = TrainPage(self)
        self.result_page = ResultPage(self)
        for page in (self.pipeline_page, self.data_page, self.params_page, self.train_page, self.result_page):
            self.addPage(page)
        queue.changed.connect(self._job_changed)
        queue.succeeded.connect(self._job_succeeded)
        queue.failed.connect(self._job_ended)
        queue.cancelled.connect(self._job_ended)
        self.resize(820, 620)

    def trainer(self) -> Trainer | None:
        item = self.pipeline_page.list.currentItem()
        return self.trainers.get(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None

    # ------------------------------------------------------------------ training job

    def start(self, resume: bool = False) -> Any:
        """Queue the training job (``resume`` continues in the same folder from its checkpoint)."""
        trainer = self.trainer()
        if trainer is None or self.params is None:
            return None
        if not resume or self.out_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.out_dir = user_models_dir() / ".training" / f"{trainer.model_pipeline}-{stamp}"
            self.train_page.plot.clear()
            self.train_page.plot.addLegend()
            self.train_page.curves.clear()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        sources, params, out_dir = self.data_page.chosen(), self.params, self.out_dir
        split = self.data_page.split.value() / 100
        self._started = time.monotonic()
        self.result_dir = None
        self.record = self.queue.submit(
            f"Train {trainer.title}",
            lambda: _call_trainer(trainer, sources, params, out_dir, resume, split), kind="train")
        self.train_page.set_running(True)
        self.train_page.status.setText("Queued...")
        return self.record

    def cancel(self) -> None:
        if self.record is not None:
            self.queue.cancel(self.record)

    def _job_changed(self, record: Any) -> None:
        if record is not self.record or record.progress is None or record.progress is self._last_event:
            return
        event: Progress = record.progress
        self._last_event = event
        page = self.train_page
        if event.total:
            page.progress.setRange(0, event.total)
            page.progress.setValue(event.done)
        page.status.setText(f"[{event.stage}] {event.message}")
        for key, value in (event.data or {}).items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and key not in ("step", "elapsed_s", "epoch"):
                page.add_point(f"val {key}" if event.stage == "validate" else key,
                               float(event.data.get("step", event.done)), float(value))
        match = _LOSS.search(event.message or "")
        if match and event.stage == "train":
            try:
                page.add_point("loss", float(event.done), float(match.group(1)))
            except ValueError:
                pass
        epochs = getattr(self.params, "epochs", None) or getattr(self.params, "max_epochs", None)
        if event.stage == "train" and event.total and event.done >= 5 and epochs and record.stage_started_at:
            per_step = (time.monotonic() - record.stage_started_at) / event.done
            page.estimate.setText(f"about {per_step * event.total / epochs:.0f} s per epoch")

    def _job_succeeded(self, record: Any) -> None:
        if record is not self.record:
            return
        self.result_dir = Path(record.result) if record.result else self.out_dir
        self.train_page.status.setText(f"Finished: model written to {self.result_dir}")
        self.train_page.set_running(False)

    def _job_ended(self, record: Any) -> None:
        if record is not self.record:
            return
        self.train_page.status.setText(f"Training {record.status}: {record.message}. Resume continues from the "
                                       "last checkpoint.")
        self.train_page.set_running(False)

    # ------------------------------------------------------------------ result

    def _ask(self, title: str, text: str) -> bool:
        buttons = QMessageBox.StandardButton
        return QMessageBox.warning(self, title, text, buttons.Save | buttons.Cancel, buttons.Cancel) == buttons.Save

    def result_card(self) -> Any:
        if self.result_dir is None:
            return None
        try:
            from app.core.modelcard import load_model_card

            return load_model_card(self.result_dir)
        except UserError:
            return None

    def save_model(self) -> Path | None:
        """Move the trained model into the user's library under the chosen name."""
        if self.result_dir is None:
            return None
        name = self.result_page.name.text().strip()
        if not name:
            self.result_page.status.setText("Give the model a name.")
            return None
        card = self.result_card()
        zero = zero_metrics(card.metrics if card is not None else {})
        question = nothing_found_text(zero) + "\n\nSave it anyway?"
        if zero and not self.confirm("Save a model that finds nothing?", question):
            self.result_page.status.setText("Not saved: " + ", ".join(zero) + ".")
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        target = user_models_dir() / safe
        if target.exists():
            self.result_page.status.setText(f"A model folder {target} exists already; choose another name.")
            return None
        card_path = self.result_dir / "card.json"
        if card_path.is_file():
            card = json.loads(card_path.read_text())
            card["name"] = name
            atomic_write_json(card_path, card)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.result_dir), str(target))
        for checkpoint in target.glob("checkpoint*"):
            checkpoint.unlink()
        self.saved_dir = target
        self.result_page.status.setText(f"Saved to {target}")
        self.model_saved.emit(target)
        return target


def _call_trainer(trainer: Trainer, sources: list[TrainingSource], params: Any, out_dir: Path, resume: bool,
                  validation_fraction: float) -> Any:
    """Call a trainer with the keywords it accepts (validation_fraction is optional for it)."""
    import inspect

    kwargs: dict[str, Any] = {"resume": resume}
    try:
        accepted = inspect.signature(trainer.train).parameters
    except (TypeError, ValueError):
        accepted = {}
    if "validation_fraction" in accepted:
        kwargs["validation_fraction"] = validation_fraction
    return trainer.train(sources, params, out_dir, **kwargs)
