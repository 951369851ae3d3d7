"""The guided loop in the window: "Train on my corrections", then re-run on the rest and compare old vs new.

The action opens the training wizard preset by :mod:`app.gui.correction_loop` (the shown run's
corrected sections, fine-tuning from the model that made them, a time estimate before Start).  Once
the new model is saved, the wizard's result page offers the next steps: re-run the project's other
images with it, and re-run the corrected sections to compare the old and the new model with the
corrections (the rows are also written to the new run's ``comparison.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtWidgets import (
    QGroupBox, QHBoxLayout, QLabel, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from app.core.atomic import atomic_write_json
from app.gui.correction_loop import (
    RetrainPlan, compare_old_and_new, plan_retraining, preset_values, rerun_models, run_params,
)

if TYPE_CHECKING:
    from app.gui.window_api import WindowApi

COMPARISON_FILE = "comparison.json"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


class NextSteps(QGroupBox):
    """Shown in the wizard's result page once the model is saved: re-run, compare, and the comparison."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Next steps", parent)
        self.rerun_button = QPushButton("Re-run on the rest")
        self.compare_button = QPushButton("Compare old and new model on the corrected sections")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.queued = QLabel("")  # the re-runs queued (the comparison's own line stays in status)
        self.queued.setWordWrap(True)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Agreement with your corrections", "old model", "new model", "objects"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setColumnWidth(0, 240)
        self.table.setVisible(False)
        row = QHBoxLayout()
        row.addWidget(self.rerun_button)
        row.addWidget(self.compare_button)
        row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.queued)
        layout.addWidget(self.status)
        layout.addWidget(self.table)
        self.setVisible(False)

    def show_rows(self, rows: list[dict[str, Any]]) -> None:
        """Fill the comparison table."""
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, text in enumerate((row["what"], _percent(row["old"]), _percent(row["new"]), str(row["objects"]))):
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.table.setVisible(bool(rows))


class LoopController:
    """Runs the guided correct -> train -> re-run -> compare path; see the module docstring."""

    def __init__(self, window: WindowApi) -> None:
        self.w = window
        self.plan: RetrainPlan | None = None
        self.wizard: Any = None
        self.steps: NextSteps | None = None
        self.new_model: Path | None = None
        self.records: dict[str, Any] = {}  # "rest" / "compare" -> queued job
        self.comparison: list[dict[str, Any]] | None = None
        window.queue.succeeded.connect(self._job_succeeded)

    def train_on_corrections(self) -> Any:
        """Open the training wizard preset for the shown run's corrections (None when there are none)."""
        from app.gui.training_wizard import TrainingWizard

        w = self.w
        if w.project is None or w.current_run is None:
            w.show_error("Nothing to train on", "Show a run's results in the viewer and correct them first.")
            return None
        plan = w.guard("Cannot train on the corrections", plan_retraining, w.project, w.current_run)
        if plan is None:
            return None
        wizard = TrainingWizard(w.project, w.settings, w.queue, w)
        trainer = wizard.trainers.get(plan.model_pipeline)
        if trainer is None:
            w.show_error("Cannot train on the corrections", f"no trainer for {plan.model_pipeline} is installed")
            return None
        values, notes = {}, {}
        for model_pipeline in {plan.model_pipeline, *plan.starts}:  # the other layer's trainer, when chosen
            other = wizard.trainers.get(model_pipeline)
            if other is not None:
                values[model_pipeline], why = preset_values(other.params, plan.starts.get(model_pipeline, ""))
                notes[model_pipeline] = plan.note(model_pipeline) + (f" Note: {why}." if why else "")
        wizard.preset(plan.model_pipeline, plan.sources, values, notes)
        self.steps = NextSteps()
        self.steps.rerun_button.clicked.connect(self.rerun_rest)
        self.steps.compare_button.clicked.connect(self.compare)
        wizard.result_page.layout().addWidget(self.steps)
        wizard.model_saved.connect(self.model_saved)
        wizard.model_saved.connect(lambda _folder: w.run_panel.refresh_models())
        self.plan, self.wizard, self.new_model, self.comparison, self.records = plan, wizard, None, None, {}
        wizard.open()
        return wizard

    def model_saved(self, folder: Path) -> None:
        """The new model is in the library: offer the next steps."""
        self.new_model = Path(folder)
        steps, plan = self.steps, self.plan
        if steps is None or plan is None:
            return
        steps.rerun_button.setText(f"Re-run on the rest ({len(plan.rest)} image(s))")
        steps.rerun_button.setEnabled(bool(plan.rest))
        steps.rerun_button.setToolTip("" if plan.rest else "Every image of the project was corrected")
        steps.status.setText(f"{self.new_model.name} is in your model library.")
        steps.setVisible(True)

    def rerun_rest(self) -> Any:
        """Analyse the project's uncorrected images with the new model."""
        return self._submit("rest", self.plan.rest if self.plan else [])

    def compare(self) -> Any:
        """Analyse the corrected sections with the new model; the comparison follows when it ends."""
        return self._submit("compare", self.plan.images if self.plan else [])

    def _submit(self, what: str, images: list[str]) -> Any:
        from app.core.project import Run
        from app.gui.run_panel import RunRequest
        from app.pipelines import registry

        w, plan = self.w, self.plan
        if plan is None or self.new_model is None or not images:
            return None
        spec = registry.get(plan.pipeline)
        params = w.guard("Cannot re-run", run_params, spec, Run.load(plan.run_folder))
        if params is None:
            return None
        trained = self.wizard.trainer()
        models = rerun_models(plan, trained.model_pipeline if trained else plan.model_pipeline, self.new_model)
        record = w.runs.submit_run(RunRequest(plan.pipeline, params, models, False, images=list(images)))
        if record is not None:
            self.records[what] = record
            if self.steps is not None:
                self.steps.queued.setText(f"Queued: {record.title} with {self.new_model.name}.")
        return record

    def _job_succeeded(self, record: Any) -> None:
        if record is not self.records.get("compare") or self.plan is None:
            return
        from app.core.project import Run

        new_run = Run.load(record.result)
        rows = self.w.guard("Cannot compare the models", compare_old_and_new, Run.load(self.plan.run_folder),
                            new_run, self.plan.images)
        if rows is None:
            return
        self.comparison = rows
        atomic_write_json(Path(new_run.folder) / COMPARISON_FILE,
                          {"corrected_run": self.plan.run_id, "new_model": str(self.new_model),
                           "old_models": self.plan.old_models, "sections": self.plan.images, "rows": rows})
        if self.steps is not None:
            self.steps.show_rows(rows)
            self.steps.status.setText(f"Compared on {len(self.plan.images)} corrected section(s): run "
                                      f"{self.plan.run_id} (old model) and run {new_run.id} (new model).")
