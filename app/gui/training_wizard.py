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

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QMessageBox, QWidget, QWizard

from app.core.atomic import atomic_write_json
from app.core.device import job_params
from app.core.errors import UserError
from app.core.jobs import Progress
from app.core.paths import user_models_dir
from app.core.settings import Settings
from app.gui.training_pages import DataPage, ParamsPage, PipelinePage, ResultPage, TrainPage
from app.gui.training_sources import (
    Trainer, call_trainer, find_trainers, nothing_found_text, zero_metrics,
)

_LOSS = re.compile(r"\bloss\s*[=:]?\s*([0-9.eE+-]+)")


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
        self.preset_pipeline: str | None = None  # "Train on my corrections" presets (app/gui/loop_controller.py)
        self.preset_values: dict[str, dict[str, Any]] = {}  # trainer -> form values
        self.preset_notes: dict[str, str] = {}  # trainer -> what the preset means
        self.estimate: Any = None  # the time estimate shown before Start (app/gui/training_estimate.py)
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

    def preset(self, model_pipeline: str, sources: list[Any], values: dict[str, dict[str, Any]],
               notes: dict[str, str] | None = None) -> None:
        """Choose the trainer, tick only ``sources`` (adding those not listed) and preset parameter values
        (``values`` and ``notes`` by trainer: the user may choose another one)."""
        from app.gui.training_sources import same_source

        pipeline_list = self.pipeline_page.list
        for row in range(pipeline_list.count()):
            if pipeline_list.item(row).data(Qt.ItemDataRole.UserRole) == model_pipeline:
                pipeline_list.setCurrentRow(row)
        self.preset_pipeline, self.preset_values, self.preset_notes = model_pipeline, dict(values), dict(notes or {})
        self.data_page.tick_only(sources, same_source)
        self.pipeline_page.description.setText(self.preset_notes.get(model_pipeline, ""))

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
        sources, out_dir = self.data_page.chosen(), self.out_dir
        params = job_params(self.params, self.settings.device, int(self.settings.threads))  # Settings: defaults
        split = self.data_page.split.value() / 100
        self._started = time.monotonic()
        self.result_dir = None
        self.record = self.queue.submit(
            f"Train {trainer.title}",
            lambda: call_trainer(trainer, sources, params, out_dir, resume, split), kind="train")
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
