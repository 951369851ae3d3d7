"""The run panel: pick a pipeline, its models and parameters, and run it on images.

Everything comes from the pipeline registry (app/pipelines/registry.py): the pipeline list, the
models each one needs (``model_pipelines``, filled from the model library), and the parameter form
built from the pipeline's parameters dataclass.  A new pipeline therefore appears here without
GUI changes.  Last-used parameters and models are remembered in the user's settings.  With a run
queue set in the settings (``batch_cluster``: a Dask scheduler or a local cluster), a run on several
images is dispatched as one batch (:func:`cluster_batch_job`, app.batch) into a new run folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QRadioButton,
    QScrollArea, QVBoxLayout, QWidget,
)

from app.core.settings import Settings
from app.gui.forms import DataclassForm, jsonable_params

NO_MODEL = "(no model)"
ANTIBODY_FIELD = "antibodies"  # a parameters field of this name gets the checkable channel list


def is_dna_channel(name: str) -> bool:
    """A nuclear stain (DAPI, Hoechst): offered as an antibody channel but not ticked."""
    from app.pipelines.suitability import DNA_CHANNELS

    return name.strip().lower() in DNA_CHANNELS


def merge_antibodies(text: str, channels: list[str]) -> str:
    """The form's ``NAME=CHANNEL[:T]`` entries plus ``C=C`` for each ticked channel not named there.

    A bare name typed in the form (``SOX9``) means the channel of that name, as the list does.
    """
    entries = [item.strip() for item in text.split(",") if item.strip()]
    entries = [item if "=" in item else f"{item}={item}" for item in entries]
    named = {item.partition("=")[0].strip().lower() for item in entries}
    entries += [f"{c}={c}" for c in channels if c.lower() not in named]
    return ",".join(entries)


@dataclass
class RunRequest:
    """What the user asked to run: pipeline name, parameters instance, models by role, scope."""

    pipeline: str
    params: Any
    models: dict[str, str]
    all_images: bool
    images: list[str] | None = None  # these images, whatever is selected (the correction loop's re-runs)


def list_models(model_pipeline: str) -> list[Any]:
    """Cards of the models for one model pipeline (user models first), or [] when none or unknown."""
    try:
        from app.core.modelcard import find_models

        return find_models(model_pipeline)
    except (ImportError, ValueError):
        return []


def batch_adapter(pipeline: str, settings: Settings, project: Any, images: list[str]) -> Any:
    """The pipeline's spec when this run should go to the settings' cluster, else None.

    Only runs on several images go there, and only when the pipeline analyses one item at a time and
    the batch names each image as the project does (its per-image folders must match the image names).
    """
    if not settings.batch_cluster or len(images) < 2:
        return None
    try:
        from app.pipelines.registry import get
        from app.pipelines.runner import image_name

        spec = get(pipeline)
    except Exception:  # noqa: BLE001 - a pipeline the registry does not know: run here
        return None
    if spec.analyze_one is None:
        return None
    same_names = all(image_name(project.image_path(name)) == name for name in images)
    return spec if same_names else None


def cluster_batch_job(project: Any, pipeline: str, adapter: Any, images: list[str], params: Any,
                      models: dict[str, str], cluster: str) -> Any:
    """Job: the images as one app.batch batch on ``cluster``, written as a new run of the project; returns it."""
    from app.batch.runner import batch_job
    from app.core.project import new_run_id

    kinds = {pipeline_name: kind for kind, pipeline_name in adapter.models.items()}
    batch_models = {kinds.get(key, key): value for key, value in models.items() if value}
    out = Path(project.runs_dir) / new_run_id()
    paths = [project.image_path(name) for name in images]
    yield from batch_job(pipeline, paths, out, cluster, batch_models, jsonable_params(params))
    return out


class RunPanel(QWidget):
    """Pipeline, models, parameters and scope; ``run_requested`` carries a :class:`RunRequest`."""

    run_requested = Signal(object)

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.specs: dict[str, Any] = {}
        self.pipeline_combo = QComboBox()
        self.pipeline_combo.currentIndexChanged.connect(self._pipeline_changed)
        self._chosen = bool(settings.pipeline_params.get("__last__"))  # the user picked a pipeline (now or before)
        self.pipeline_combo.activated.connect(lambda _index: setattr(self, "_chosen", True))
        self.description = QLabel("")
        self.description.setWordWrap(True)
        self.models_box = QGroupBox("Models")
        self.models_form = QFormLayout(self.models_box)
        self.model_combos: dict[str, QComboBox] = {}
        self.params_box = QGroupBox("Parameters")
        params_layout = QVBoxLayout(self.params_box)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        params_layout.addWidget(self.scroll)
        self.form: DataclassForm | None = None
        self.reset_button = QPushButton("Defaults")
        self.reset_button.setToolTip("Reset the parameters to the pipeline's defaults")
        self.reset_button.clicked.connect(lambda: self.form.reset() if self.form else None)
        self.antibody_box = QGroupBox("Antibody channels")
        self.antibody_box.setToolTip("Channels whose antigen profiles are measured (from the selected images' "
                                     "channel names); thresholds can be set later in the report exporter")
        self.antibody_list = QListWidget()
        QVBoxLayout(self.antibody_box).addWidget(self.antibody_list)
        self.antibody_box.setVisible(False)
        self.image_facts: list[Any] = []  # app.pipelines.suitability.ImageFacts of the selected images
        self.selected_radio = QRadioButton("Selected images")
        self.all_radio = QRadioButton("All images")
        self.selected_radio.setChecked(True)
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Queue the pipeline on the chosen images (Ctrl+R)")
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(lambda: self.request_run(self.all_radio.isChecked()))
        scope = QHBoxLayout()
        scope.addWidget(self.selected_radio)
        scope.addWidget(self.all_radio)
        scope.addStretch(1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.reset_button)
        buttons.addStretch(1)
        buttons.addWidget(self.run_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        row = QFormLayout()
        row.addRow("Pipeline", self.pipeline_combo)
        layout.addLayout(row)
        layout.addWidget(self.description)
        layout.addWidget(self.models_box)
        layout.addWidget(self.antibody_box)
        layout.addWidget(self.params_box, 1)
        layout.addLayout(scope)
        layout.addLayout(buttons)
        self.reload()

    # ------------------------------------------------------------------ content

    def reload(self) -> None:
        """Re-read the registry (pipelines may register after start-up) and the model library."""
        from app.pipelines import registry

        current = self.pipeline_combo.currentData()
        self.specs = registry.pipelines(hidden=False)
        self.pipeline_combo.blockSignals(True)
        self.pipeline_combo.clear()
        for name, spec in sorted(self.specs.items(), key=lambda kv: kv[1].title):
            self.pipeline_combo.addItem(spec.title, name)
        self.pipeline_combo.blockSignals(False)
        if current in self.specs:
            self.pipeline_combo.setCurrentIndex(self.pipeline_combo.findData(current))
        elif self.specs:
            last = self.settings.pipeline_params.get("__last__", {}).get("pipeline")
            last = last if last in self.specs else self.fitting_pipeline()
            index = self.pipeline_combo.findData(last) if last in self.specs else 0
            self.pipeline_combo.setCurrentIndex(max(0, index))
        self._pipeline_changed()
        self.run_button.setEnabled(bool(self.specs))
        if not self.specs:
            self.description.setText("No pipeline is installed in this build.")

    def current_spec(self) -> Any:
        name = self.pipeline_combo.currentData()
        return self.specs.get(name)

    def fitting_pipeline(self) -> str | None:
        """The pipeline that fits the selected images' kind (app.pipelines.suitability), if any."""
        from app.pipelines.suitability import suggest_pipeline

        return suggest_pipeline(self.image_facts, self.specs) if self.image_facts else None

    def set_images(self, facts: list[Any]) -> None:
        """The selected images changed: offer their antibody channels, and the pipeline that fits them
        unless the user has picked one."""
        self.image_facts = list(facts)
        fitting = self.fitting_pipeline()
        if fitting and not self._chosen:
            self.select_pipeline(fitting)
        self._fill_antibodies()

    def _fill_antibodies(self) -> None:
        """List the selected images' channels (ticks the user set are kept); shown for pipelines with antibodies."""
        spec = self.current_spec()
        wanted = spec is not None and ANTIBODY_FIELD in {f.name for f in dataclasses.fields(spec.params)}
        previous = {self.antibody_list.item(i).text(): self.antibody_list.item(i).checkState()
                    for i in range(self.antibody_list.count())}
        channels: list[str] = []
        for facts in self.image_facts:
            channels += [c for c in facts.channels if c and c not in channels]
        self.antibody_list.clear()
        for name in channels:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            default = Qt.CheckState.Unchecked if is_dna_channel(name) else Qt.CheckState.Checked
            item.setCheckState(previous.get(name, default))
            self.antibody_list.addItem(item)
        rows = min(max(len(channels), 1), 4)  # as tall as its channels (up to 4), so the parameters keep the room
        row = self.antibody_list.sizeHintForRow(0) if channels else 18
        self.antibody_list.setFixedHeight(rows * max(row, 16) + 2 * self.antibody_list.frameWidth() + 2)
        self.antibody_box.setVisible(bool(wanted and channels))

    def checked_antibodies(self) -> list[str]:
        """The ticked antibody channels (empty when the list is not shown)."""
        if not self.antibody_box.isVisibleTo(self):
            return []
        return [self.antibody_list.item(i).text() for i in range(self.antibody_list.count())
                if self.antibody_list.item(i).checkState() == Qt.CheckState.Checked]

    def suggest_pipeline(self, name: str) -> None:
        """Show ``name`` (the pipeline of the results in view) unless the user has picked a pipeline."""
        if not self._chosen:
            self.select_pipeline(name)

    def select_pipeline(self, name: str) -> None:
        index = self.pipeline_combo.findData(name)
        if index >= 0:
            self.pipeline_combo.setCurrentIndex(index)

    def _pipeline_changed(self, *_: Any) -> None:
        spec = self.current_spec()
        for combo in self.model_combos.values():
            combo.deleteLater()
        while self.models_form.rowCount():
            self.models_form.removeRow(0)
        self.model_combos.clear()
        if self.form is not None:
            self.form.deleteLater()
            self.form = None
        if spec is None:
            return
        kinds = ", ".join(spec.image_kinds) if spec.image_kinds else "any image"
        self.description.setText(f"{spec.description}\nInput: {kinds}.")
        for model_pipeline in spec.model_pipelines:
            combo = QComboBox()
            cards = list_models(model_pipeline)
            for card in cards:
                label = card.name + (f" ({card.backbone})" if card.backbone else "")
                combo.addItem(label, str(card.folder))
                combo.setItemData(combo.count() - 1, _card_tooltip(card), role=3)  # ToolTipRole
            if not cards:
                combo.addItem(NO_MODEL, "")
            default = self.settings.default_models.get(model_pipeline)
            if default:
                index = combo.findData(default)
                if index < 0:
                    index = next((i for i in range(combo.count()) if combo.itemText(i).split(" (")[0] == default), -1)
                if index >= 0:
                    combo.setCurrentIndex(index)
            self.models_form.addRow(model_pipeline, combo)
            self.model_combos[model_pipeline] = combo
        self.models_box.setVisible(bool(spec.model_pipelines))
        self.form = DataclassForm(spec.params, self.settings.pipeline_params.get(spec.name))
        self.scroll.setWidget(self.form)
        self._fill_antibodies()

    def refresh_models(self) -> None:
        """Re-list the models (after an import or a training)."""
        self._pipeline_changed()

    # ------------------------------------------------------------------ running

    def build_request(self, all_images: bool = False) -> RunRequest:
        """The request for the current choices; raises ValueError with a readable message."""
        spec = self.current_spec()
        if spec is None:
            raise ValueError("choose a pipeline first")
        if self.form is None:
            raise ValueError("the pipeline has no parameter form")
        params = self.form.values()
        if self.antibody_box.isVisibleTo(self) and hasattr(params, ANTIBODY_FIELD):
            text = merge_antibodies(getattr(params, ANTIBODY_FIELD) or "", self.checked_antibodies())
            params = dataclasses.replace(params, **{ANTIBODY_FIELD: text})
        if callable(getattr(params, "validate", None)):
            params.validate()  # a value that cannot work is refused now, not seconds into the job
        models = {role: combo.currentData() for role, combo in self.model_combos.items() if combo.currentData()}
        return RunRequest(spec.name, params, models, all_images)

    def request_run(self, all_images: bool = False) -> None:
        """Emit ``run_requested`` (invalid input is shown by the main window through the exception)."""
        request = self.build_request(all_images)
        self.remember(request)
        self.run_requested.emit(request)

    def remember(self, request: RunRequest) -> None:
        """Keep the parameters (as typed in the form, without the ticked channels) and models as the last used."""
        typed = self.form.values() if self.form is not None else request.params
        self.settings.pipeline_params[request.pipeline] = jsonable_params(typed)
        self.settings.pipeline_params["__last__"] = {"pipeline": request.pipeline}
        self._chosen = True
        for role, folder in request.models.items():
            self.settings.default_models[role] = folder


def _card_tooltip(card: Any) -> str:
    lines = [f"{card.name}: {card.pipeline} / {card.architecture}"]
    if card.classes:
        lines.append("classes: " + ", ".join(card.classes))
    if card.training.get("data"):
        lines.append(f"trained on: {card.training['data']}")
    lines.append(f"folder: {card.folder}")
    return "\n".join(lines)


# ------------------------------------------------------------------ jobs of a run


def params_with_threads(params: Any, threads: int) -> Any:
    """``params`` with the Settings' CPU thread count where the pipeline has a ``threads`` parameter left at
    its default (a value typed in the run form wins for that run)."""
    fields = {f.name: f for f in dataclasses.fields(params)} if dataclasses.is_dataclass(params) else {}
    field = fields.get("threads")
    if field is None or field.default is dataclasses.MISSING or getattr(params, "threads") != field.default:
        return params
    return dataclasses.replace(params, threads=int(threads))


def with_threads(threads: int, factory: Any) -> Any:
    """Job: ``factory()``'s job with torch held to ``threads`` CPU threads (0: torch's choice).

    torch keeps its thread count per thread, so it is set here, on the worker thread that pulls the job.
    """
    if threads > 0:
        import torch

        torch.set_num_threads(int(threads))
    job = factory()
    if hasattr(job, "send") and hasattr(job, "throw"):
        return (yield from job)
    return job


def run_outcome(result: Any) -> tuple[str, dict[str, str]]:
    """A finished run's verdict from its run.json: ("partly failed" | "failed", {image: reason}), or no problems."""
    from app.core.project import Run

    if not isinstance(result, (str, Path)) or not (Path(result) / "run.json").is_file():
        return "finished", {}
    run = Run.load(result)
    if not run.failed:
        return "finished", {}
    return ("partly failed" if run.results else "failed"), dict(run.failed)
