"""The correct -> train -> re-run loop driven once through the main window, with a tiny network.

Two drawn sections are analysed by the oracle networks of tests/test_stagetool_section.py (the
"model that made the predictions" wears the card of a tiny real Stagetool model, so the wizard has
a model folder to fine-tune from).  The user restages every tubule of the first section to I-V,
opens "Train on my corrections" (preset: that run's section, fine-tuning from that model, a time
estimate), trains a tiny Mask R-CNN for a few epochs in the job queue, compares old and new model
on the corrected section and re-runs the other section.  The new model's own predictions must show
the corrected stage: something the oracle never gives those tubules.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
torch = pytest.importorskip("torch")

from gui_testing import main_window  # noqa: E402

try:
    from test_stagetool_section import SCALE, draw_section, oracle_model
except ImportError as error:  # pragma: no cover
    pytest.skip(f"the Stagetool oracle helpers are not available ({error})", allow_module_level=True)

TARGET = "I-V"  # a stage the oracle gives no tubule of these two sections
TINY = dict(backbone="tiny", crop_size=128, downsample=2, epochs=8, crops_per_epoch=16, batch_size=2, lr=3e-3,
            val_crops=2, threads=1, half=False, augment=True)


def _tiny_start_model(folder: Path, section: Path) -> Path:
    """A real tiny tubule model (one short epoch): the card and backbone the loop fine-tunes from."""
    from app.core.annotations import AnnotatedObject
    from app.core.jobs import run
    from app.pipelines.stagetool.dataset import Section
    from app.pipelines.stagetool.params import TrainParams
    from app.pipelines.stagetool.train import train

    square = [[60, 60], [140, 60], [140, 140], [60, 140]]
    params = TrainParams(kind="tubules", **{**TINY, "epochs": 1, "crops_per_epoch": 2, "val_crops": 1})
    run(train([], folder, params, name="lab-tubules-v1",
              sections=[Section(name="start", objects=[AnnotatedObject(1, "IX", polygons=[np.array(square, float)])],
                                path=section)]))
    return folder


@pytest.fixture
def loop_project(tmp_path, monkeypatch):
    from app.core.images import write_tiff
    from app.core.modelcard import load_model_card
    from app.core.paths import user_models_dir
    from app.core.project import Project
    from app.pipelines.stagetool import loading, predict

    monkeypatch.setattr(predict, "intensity_range", lambda overview: (0.0, SCALE))
    paths, truths = [], []
    for seed in (0, 1):
        image, truth, _ = draw_section(seed)
        path = tmp_path / f"sec{seed}.ome.tif"
        write_tiff(path, image.astype(np.uint16), axes="CYX", channel_names=["DAPI", "SOX9"], pixel_size_um=0.5)
        paths.append(path)
        truths.append(truth)
    torch.set_num_threads(1)
    start = _tiny_start_model(tmp_path / "lab-tubules-v1", paths[0])
    oracles = {"tubules": oracle_model("tubules", 128, downsample=2), "cells": oracle_model("cells", 128)}
    oracles["tubules"].card = load_model_card(start)  # the oracle answers in the name of the tiny model
    real_load = loading.load_model
    library = user_models_dir()

    def load(name, kind, device="auto"):
        """Models saved to the library by the wizard are loaded for real; anything else is the oracle."""
        if name and Path(name).parent == library:
            return real_load(name, kind, "cpu")
        return oracles[kind]

    monkeypatch.setattr(loading, "load_model", load)  # what the spec's load calls
    project = Project.create(tmp_path / "project", name="loop")
    for path in paths:
        project.add_image(path, group="testis")
    return Project.open(project.folder), truths, start


def _stages(run, image):
    from app.gui.run_files import base_objects_file

    doc = json.loads(base_objects_file(run, image).read_text())
    return Counter(t["class"] for t in doc["layers"]["tubules"])


def _stage_area(run, image):
    """Tubule area (box area, image pixels) per stage in a run's predictions of ``image``."""
    from app.gui.run_files import base_objects_file

    doc = json.loads(base_objects_file(run, image).read_text())
    area: dict[str, float] = {}
    for t in doc["layers"]["tubules"]:
        x0, y0, x1, y1 = t["box"]
        area[t["class"]] = area.get(t["class"], 0.0) + (x1 - x0) * (y1 - y0)
    return area


def test_correct_train_rerun_learns_the_corrected_stage(qtbot, loop_project):
    project, truths, start = loop_project
    window = main_window(qtbot)
    try:
        # analyse both sections with the "old" model
        assert window.open_project(project.folder, "sec0") and window.wait_until_ready(20)
        window.run_panel.reload()
        window.run_panel.select_pipeline("stagetool")
        for name, value in {"tta": "off", "overlap": 48, "map_scale": 2}.items():
            window.run_panel.form.editors[name].set_value(value)
        combo = window.run_panel.model_combos["stagetool-tubules"]  # the run records the model it was given
        combo.addItem("lab-tubules-v1", str(start))
        combo.setCurrentIndex(combo.count() - 1)
        window.run_pipeline(True)
        assert window.queue.wait(120) and window.wait_until_ready(20)
        assert not window.errors, window.errors
        [old_run] = project.runs()
        old0, old1 = _stages(old_run, "sec0"), _stages(old_run, "sec1")
        assert old0[TARGET] + old1[TARGET] == 0 < sum(old0.values()) + sum(old1.values())

        # correct: every tubule of sec0 is restaged to I-V in the viewer
        window.open_image("sec0")
        assert window.wait_until_ready(20)
        tubules = list(window.viewer.overlays.layers["tubules"].data.objects)
        for tubule in tubules:
            assert window.select_object("tubules", tubule["id"])
            window.restage(TARGET)
        assert {t["class"] for t in window.viewer.overlays.layers["tubules"].data.objects} == {TARGET}

        # Train on my corrections: the wizard comes preset
        window.actions["train_corrections"].trigger()
        wizard = window.loop.wizard
        assert wizard is not None and not window.errors, window.errors
        wizard.confirm = lambda *args: True
        assert wizard.trainer().model_pipeline == "stagetool-tubules"
        assert "fine-tunes from the model that made these predictions (lab-tubules-v1)" in \
            wizard.pipeline_page.description.text()
        wizard.next()
        chosen = wizard.data_page.chosen()
        assert [(s.kind, s.image, Path(s.run_folder)) for s in chosen] == [("corrected", "sec0", old_run.folder)]
        wizard.next()
        form = wizard.params_page.form
        assert form.editors["init_from"].value() == str(start)
        # fine-tuning keeps the start model's network (its card's recipe) at the fine-tuning rate
        assert [form.editors[k].value() for k in ("backbone", "crop_size", "downsample", "lr")] == ["tiny", 128, 2, 2e-4]
        for key, value in TINY.items():
            form.editors[key].set_value(value)
        wizard.next()
        assert wizard.params.init_from == str(start)
        assert wizard.estimate.seconds is not None and "lab-tubules-v1" in wizard.train_page.before.text()
        wizard.train_page.start_button.click()
        assert window.queue.wait(600), "training did not finish"
        assert wizard.record.status == "finished", wizard.record.message
        assert "loss" in wizard.train_page.curves  # live curves
        wizard.next()
        wizard.result_page.name.setText("lab-tubules-v2")
        saved = wizard.save_model()
        assert saved is not None and window.loop.steps.isVisible()
        card = json.loads((saved / "card.json").read_text())
        assert "fine-tuned from model 'lab-tubules-v1'" in card["training"]["pretraining"]  # the whole network

        # compare old vs new on the corrected section, then re-run the rest
        assert window.loop.compare() is not None
        assert window.queue.wait(120) and not window.errors, window.errors
        rows = {row["what"]: row for row in window.loop.comparison}
        stage = rows["tubule stage agreement"]
        # the old model staged none of the 5 corrected tubules as I-V; the tiny new one finds at least 3 of them
        # with that stage (it also merges neighbours and leaves slivers: 8 epochs of a tiny network)
        assert stage["old"] == 0 and stage["new"] >= 0.6, rows
        assert window.loop.steps.table.rowCount() == len(rows)
        compare_run = project.runs()[-1]
        assert (compare_run.folder / "comparison.json").is_file()
        assert list(compare_run.results) == ["sec0"]

        assert window.loop.rerun_rest() is not None
        assert window.queue.wait(120) and not window.errors, window.errors
        rest_run = project.runs()[-1]
        assert list(rest_run.results) == ["sec1"]
        area = _stage_area(rest_run, "sec1")  # a section it never saw: most tubule area now staged I-V
        assert area.get(TARGET, 0) >= 0.8 * sum(area.values()) > 0, area
    finally:
        window.confirm = lambda *args: True
        window.queue.shutdown()
        window.close()
