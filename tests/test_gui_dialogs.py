"""The dialogs (pytest-qt, offscreen): model library, settings, report exporter, training wizard."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from app.core.jobs import Progress  # noqa: E402
from app.core.settings import Settings  # noqa: E402
from app.gui.main import configure_pyqtgraph  # noqa: E402

from gui_fakes import make_project  # noqa: E402


@pytest.fixture(autouse=True)
def _pyqtgraph():
    configure_pyqtgraph()


def write_fake_model(folder: Path, name: str = "tiny", pipeline: str = "kaizen", input_channels: int = 1,
                     metrics: dict | None = None, channel_meaning: list | None = None) -> Path:
    """A model folder with a card whose sha256 matches its (fake) weights file; no torch needed."""
    from app.core.modelcard import ModelCard, sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.pt").write_bytes(b"not really a state dict")
    card = ModelCard(name=name, pipeline=pipeline, architecture="test", input_channels=input_channels,
                     classes=["nucleus"], metrics=metrics or {"val": {"data": "phantoms", "AP50": 0.5}},
                     channel_meaning=channel_meaning or [],
                     weights_sha256=sha256_file(folder / "weights.pt"))
    (folder / "card.json").write_text(json.dumps(card.to_dict()))
    return folder


# ----------------------------------------------------------------------------- model library


def test_model_library_imports_verified_models_and_refuses_tampered_ones(qtbot, tmp_path):
    from app.core.paths import user_models_dir
    from app.gui.model_library import ModelLibrary, card_html, fit_problem

    source = write_fake_model(tmp_path / "incoming" / "tiny")
    errors = []
    library = ModelLibrary(Settings(), image_info={"name": "img", "n_channels": 1, "n_planes": 1})
    library._error = lambda title, message: errors.append(message)
    qtbot.addWidget(library)
    shipped = library.tree.topLevelItemCount()  # models bundled in models/
    assert all(library.tree.topLevelItem(i).text(5) == "shipped" for i in range(shipped))
    with qtbot.waitSignal(library.models_changed):
        target = library.import_folder(source)
    assert target == user_models_dir() / "tiny" and (target / "card.json").is_file()
    assert library.tree.topLevelItemCount() == shipped + 1
    assert library.tree.topLevelItem(0).text(5) == "yours"  # user models are listed first
    assert "AP50" in library.details.toHtml() and "phantoms" in library.details.toHtml()
    assert library.fit_label.text() == "Fits image img."
    # a second import gets a new folder name; a tampered one is refused with the reason
    assert library.import_folder(source).name == "tiny_2"
    (source / "weights.pt").write_bytes(b"changed")
    assert library.import_folder(source) is None
    assert "sha256" in errors[-1]
    # export copies the folder; default is remembered
    library.tree.setCurrentItem(library.tree.topLevelItem(0))
    from app.gui.model_library import export_model

    exported = export_model(library.selected_card().folder, tmp_path / "out")
    assert (exported / "weights.pt").read_bytes() == b"not really a state dict"
    library.set_default()
    assert library.settings.default_models["kaizen"] == str(library.selected_card().folder)
    # fit check: a 3-plane brightfield model on a single-plane image is refused with the reason
    bright = write_fake_model(tmp_path / "bf", name="bf", pipeline="brightfield", input_channels=3,
                              channel_meaning=[-2.0, 0.0, 2.0])  # z offsets in µm
    from app.core.modelcard import load_model_card

    problem = fit_problem(load_model_card(bright), {"n_channels": 1, "n_planes": 1})
    assert "expects 3 input planes" in problem and "has 1" in problem
    assert "<h3>bf</h3>" in card_html(load_model_card(bright))


# ----------------------------------------------------------------------------- settings dialog


def test_settings_dialog_edits_the_settings(qtbot, tmp_path):
    from app.gui.settings_dialog import SettingsDialog

    write_fake_model(__import__("app.core.paths", fromlist=["x"]).user_models_dir() / "m1", name="m1")
    settings = Settings(last_folders={"images": str(tmp_path)}, recent_projects=["/a"])
    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    dialog.device.setCurrentText("cpu")
    dialog.theme.setCurrentText("dark")
    combo = dialog.model_combos["kaizen"]
    combo.setCurrentIndex(combo.findText("m1"))
    dialog.forget_button.click()
    dialog.accept()
    assert settings.device == "cpu" and settings.theme == "dark"
    assert settings.default_models["kaizen"].endswith("m1")
    assert settings.last_folders == {} and settings.recent_projects == []


def test_settings_dialog_run_queue_choice_is_stored_as_batch_cluster(qtbot):
    from app.core.settings import load_settings, save_settings
    from app.gui.settings_dialog import SettingsDialog

    settings = Settings(batch_cluster="local:3")
    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    queue = dialog.run_queue
    assert queue.local.isChecked() and queue.workers.value() == 3 and not queue.address.isEnabled()
    queue.address.setText("lab-server")  # typing an address picks the scheduler choice
    queue.address.textEdited.emit("lab-server")
    assert queue.scheduler.isChecked()
    dialog.accept()
    assert settings.batch_cluster == "tcp://lab-server:8786"
    save_settings(settings)
    assert load_settings().batch_cluster == "tcp://lab-server:8786"

    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    dialog.run_queue.address.setText("http://lab-server")
    dialog.accept()  # refused: the dialog stays open and says why
    assert settings.batch_cluster == "tcp://lab-server:8786" and "tcp://host:8786" in dialog.run_queue.error.text()
    dialog.run_queue.here.setChecked(True)
    dialog.accept()
    assert settings.batch_cluster == "" and dialog.run_queue.error.text() == ""


def test_the_run_queue_note_and_its_error_are_shown_whole_even_in_a_large_font(qtbot):
    """The note was cut off once the dialog ran out of height (a large font, or an error line appearing):
    a word-wrapped label's minimum height is guessed short, so the layout squeezed it."""
    from PySide6.QtGui import QFont
    from PySide6.QtWidgets import QApplication

    from app.gui.settings_dialog import SettingsDialog

    app = QApplication.instance()
    font = QFont(app.font())
    try:
        large = QFont(font)
        large.setPointSize(16)
        app.setFont(large)
        dialog = SettingsDialog(Settings())
        qtbot.addWidget(dialog)
        dialog.show()
        queue = dialog.run_queue
        queue.scheduler.setChecked(True)
        dialog.accept()  # no address: refused, with an error line under the note
        qtbot.wait(50)
        assert "batch analyze" in queue.note.text() and "tcp://host:8786" in queue.error.text()
        for label in (queue.note, queue.error):
            assert label.isVisible() and label.height() >= label.sizeHint().height(), label.text()
            assert label.width() >= label.sizeHint().width(), label.text()
        dialog.close()
    finally:
        app.setFont(font)


def test_batch_cluster_setting_values():
    from app.core.settings import check_batch_cluster

    assert check_batch_cluster("") == "" and check_batch_cluster(" local:4 ") == "local:4"
    assert check_batch_cluster("host:9000") == "tcp://host:9000" and check_batch_cluster("tls://h") == "tls://h:8786"
    for bad in ("local:0", "local:many", "http://h", "tcp://:8786", "tcp://h:port"):
        with pytest.raises(ValueError):
            check_batch_cluster(bad)
    assert Settings.from_dict({"batch_cluster": "local:0"}).batch_cluster == ""  # a bad file value is dropped
    assert Settings.from_dict({"batch_cluster": "local:2"}).batch_cluster == "local:2"


# ----------------------------------------------------------------------------- report exporter


def _project_with_antibody_run(tmp_path):
    from app.core.results import OBJECTS_FILE, write_objects

    project = make_project(tmp_path, n_images=2)
    run = project.new_run("stagetool", {})
    for number, entry in enumerate(project.images()):
        cells = [{"id": i + 1, "class": "Sertoli" if i % 2 else "Spg", "box": [10 * i, 10, 10 * i + 8, 18],
                  "centroid": [14, 10 * i + 4], "tubule_id": 1,
                  "antigen": {"SOX9": {"mean": 100.0 * i, "q": 60.0 * i}}} for i in range(10)]
        tubules = [{"id": 1, "class": "IX", "box": [0, 0, 200, 40],
                    "polygon": [[0, 0], [200, 0], [200, 40], [0, 40]], "area_px": 8000.0}]
        meta = {"antibodies": [{"name": "SOX9", "channel": "marker1", "channel_index": 1, "threshold": 450.0}]}
        path = run.image_dir(entry.name) / OBJECTS_FILE
        write_objects(path, entry.name, "stagetool", {"tubules": tubules, "cells": cells}, meta)
        run.mark_image_done(entry.name, {"objects": path})
    run.finish()
    return project, run


def test_report_exporter_thresholds_preview_and_workbook(qtbot, tmp_path):
    from app.pipelines.stagetool import tables  # noqa: F401 - what the exporter writes through
    import openpyxl

    from app.core.edits import make_edit, write_edits
    from app.gui.job_queue import JobQueue
    from app.gui.report_exporter import ReportExporter

    project, run = _project_with_antibody_run(tmp_path)
    write_edits(run.folder, [make_edit("delete_cell", "section1", 10)])
    queue = JobQueue()
    dialog = ReportExporter(project, Settings(), queue=queue)
    qtbot.addWidget(dialog)
    assert [e.image for e in dialog.chosen()] == ["section1", "section2"]
    assert dialog.table.rowCount() == 1 and dialog.current_antibody() == "SOX9"
    assert dialog.thresholds["SOX9"] == 450.0
    # cell i has mean 100 i and q 60 i (cell 10 deleted in section1): positive when mean > T and q > T/2
    dialog.set_threshold("SOX9", 450.0)
    assert "9 of 19 cells positive" in dialog.preview_label.text()  # i >= 5 in both sections: 4 + 5
    dialog.set_threshold("SOX9", 650.0)
    assert "5 of 19 cells positive" in dialog.preview_label.text()  # i >= 7: 2 + 3
    dialog.set_chosen([(run.id, "section1")])
    dialog.name_edit.setText("curated")
    with qtbot.waitSignal(dialog.report_written, timeout=20000):
        dialog.write()
    assert dialog.written == project.reports_dir / "curated.xlsx"
    book = openpyxl.load_workbook(dialog.written, read_only=True)
    assert {"Summary", "Tubules", "Cells"} <= set(book.sheetnames)
    rows = list(book["Cells"].iter_rows(values_only=True))
    assert len(rows) == 1 + 9  # the deleted cell is not reported
    header = rows[0]
    positive = [r[header.index("SOX9 positive")] for r in rows[1:]]
    assert sum(bool(p) for p in positive) == 2  # means 700, 800 at T = 650 (cell 10 deleted)


def test_report_sections_and_curated_documents(tmp_path):
    from app.core.edits import make_edit, write_edits
    from app.gui.report_sections import antibodies_of, cell_measures, curated_document, section_entries

    project, run = _project_with_antibody_run(tmp_path)
    write_edits(run.folder, [make_edit("retype_cell", "section2", 1, "m2m")])
    entries = section_entries(project)
    assert [(e.run_id, e.image) for e in entries] == [(run.id, "section1"), (run.id, "section2")]
    doc = curated_document(entries[1], {"SOX9": 123.0})
    assert doc["layers"]["cells"][0]["class"] == "m2m"
    assert doc["meta"]["antibodies"][0]["threshold"] == 123.0 and len(doc["meta"]["edits"]) == 1
    assert list(antibodies_of([doc])) == ["SOX9"]
    means, qs = cell_measures([doc], "SOX9")
    assert means.tolist() == [100.0 * i for i in range(10)] and qs[3] == 180.0


# ----------------------------------------------------------------------------- training wizard


@dataclass
class FakeTrainParams:
    epochs: int = 2
    steps_per_epoch: int = 5
    learning_rate: float = 0.01


def _fake_train(sources, params, out_dir, resume=False):
    assert sources, "the wizard passes the chosen data"
    total = params.epochs * params.steps_per_epoch
    for step in range(1, total + 1):
        yield Progress("train", step, total, f"loss {1.0 / step:.3f}")
        if step % params.steps_per_epoch == 0:
            yield Progress("validate", step // params.steps_per_epoch, params.epochs, "val",
                           data={"step": step, "dice": step / total})
    write_fake_model(Path(out_dir), name="trained", metrics={"val": {"data": "test", "dice": 1.0}})
    return Path(out_dir)


def test_training_wizard_trains_and_saves_to_the_library(qtbot, tmp_path):
    from app.core.edits import make_edit, write_edits
    from app.core.paths import user_models_dir
    from app.gui.job_queue import JobQueue
    from app.gui.training_sources import Trainer, class_counts, project_sources
    from app.gui.training_wizard import TrainingWizard

    project = make_project(tmp_path, n_images=1, with_run=True)
    run = project.runs()[0]
    write_edits(run.folder, [make_edit("restage_tubule", "section1", 1, "XII")])
    sources = project_sources(project)
    assert [(s.kind, s.image) for s in sources] == [("corrected", "section1")]
    counts = class_counts(sources)
    assert counts["XII"] == 2 and counts["Sertoli"] == 12  # the edit is applied to the training data

    queue = JobQueue()
    trainer = Trainer("kaizen", "Fake Kaizen", FakeTrainParams, _fake_train, "a test trainer")
    wizard = TrainingWizard(project, Settings(), queue, trainers={"kaizen": trainer})
    qtbot.addWidget(wizard)
    wizard.show()
    assert wizard.pipeline_page.isComplete()
    wizard.next()
    assert wizard.data_page.isComplete() and "1 source(s)" in wizard.data_page.counts.text()
    wizard.next()
    wizard.params_page.form.editors["epochs"].set_value(3)
    wizard.next()
    assert wizard.params == FakeTrainParams(epochs=3)
    assert not wizard.train_page.isComplete()
    wizard.train_page.start_button.click()
    assert queue.wait(20)
    assert wizard.result_dir is not None and wizard.train_page.isComplete()
    assert set(wizard.train_page.curves) == {"loss", "val dice"}
    assert len(wizard.train_page.curves["val dice"].points[0]) == 3
    wizard.next()
    assert wizard.result_page.table.rowCount() == 2  # val data, val dice
    wizard.result_page.name.setText("my model")
    with qtbot.waitSignal(wizard.model_saved):
        wizard.save_model()
    saved = user_models_dir() / "my_model"
    assert wizard.saved_dir == saved and json.loads((saved / "card.json").read_text())["name"] == "my model"
    from app.gui.model_library import verify_model_folder

    assert verify_model_folder(saved).name == "my model"


def test_training_wizard_without_trainers_says_so(qtbot):
    from app.gui.job_queue import JobQueue
    from app.gui.training_wizard import TrainingWizard

    wizard = TrainingWizard(None, Settings(), JobQueue(), trainers={})
    qtbot.addWidget(wizard)
    labels = [w.text() for w in wizard.pipeline_page.findChildren(__import__("PySide6.QtWidgets").QtWidgets.QLabel)]
    assert any("command line" in text for text in labels)
    assert not wizard.pipeline_page.isComplete()
