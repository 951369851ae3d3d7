"""Training from the desktop app: the pipelines' registry trainers, driven by the wizard on phantom data.

The wizard (pytest-qt, offscreen) trains a tiny Kaizen model on annotated phantom nuclei through the
real ``kaizen`` trainer in the job queue; the saved model then shows in the model library.  The
trainers' data step (annotations, corrected predictions, imported files) is tested without Qt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from app.core.settings import Settings  # noqa: E402
from app.gui.main import configure_pyqtgraph  # noqa: E402
from app.pipelines.registry import TrainingSource, pipelines, training_images  # noqa: E402

from gui_fakes import make_project  # noqa: E402

# a Kaizen network small enough to train a few steps in about a second (as tests/test_kaizen_train.py)
TINY_KAIZEN = dict(patch=24, target_diameter=10.0, channels=8, codebook_size=32, code_dim=8, batch_size=16,
                   validation_patches=32, epochs=2, steps_per_epoch=4, device="cpu")


@pytest.fixture(autouse=True)
def _setup():
    import torch

    configure_pyqtgraph()
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy 2-core machine spin against each other
    yield
    torch.set_num_threads(before)


def annotated_nuclei_project(folder: Path, count: int = 3) -> object:
    """A project of phantom nuclei images, each with a COCO annotation file in annotations/."""
    import tifffile

    from app.core.annotations import ImageAnnotations, labels_to_objects, write_coco
    from app.core.phantoms import nuclei
    from app.core.project import Project

    project = Project.create(folder / "project", name="training test")
    for index in range(count):
        phantom = nuclei(seed=index, size=96, count=8)
        path = folder / f"nuclei{index}.tif"
        tifffile.imwrite(path, phantom.image)
        entry = project.add_image(path)
        objects = labels_to_objects(phantom.labels, "nucleus")
        write_coco(project.annotation_path(entry.name), [ImageAnnotations(path.name, 96, 96, objects)])
    return Project.open(project.folder)


def test_every_pipeline_offers_its_trainers():
    offered = {name: sorted(spec.trainers) for name, spec in pipelines().items()}
    assert offered["kaizen"] == ["kaizen"]
    assert offered["brightfield"] == ["brightfield"]
    assert offered["stagetool"] == ["stagetool-cells", "stagetool-tubules"]
    tubules = pipelines()["stagetool"].trainers["stagetool-tubules"]
    assert tubules.params().kind == "tubules" and "kind" not in tubules.params.__init__.__code__.co_varnames


def test_wizard_trains_a_kaizen_model_that_appears_in_the_library(qtbot, tmp_path):
    from app.gui.job_queue import JobQueue
    from app.gui.model_library import ModelLibrary
    from app.gui.training_wizard import TrainingWizard
    from app.pipelines.kaizen.model import load_kaizen_model

    project = annotated_nuclei_project(tmp_path)
    queue = JobQueue()
    wizard = TrainingWizard(project, Settings(), queue)  # the trainers the pipelines register
    qtbot.addWidget(wizard)
    wizard.show()
    names = [wizard.pipeline_page.list.item(i).data(256) for i in range(wizard.pipeline_page.list.count())]
    assert {"kaizen", "brightfield", "stagetool-tubules", "stagetool-cells"} <= set(names)
    wizard.pipeline_page.list.setCurrentRow(names.index("kaizen"))
    wizard.next()
    assert "3 source(s), 24 objects (nucleus: 24)" in wizard.data_page.counts.text()
    wizard.next()
    for key, value in TINY_KAIZEN.items():
        wizard.params_page.form.editors[key].set_value(value)
    wizard.next()
    assert wizard.params.patch == 24 and wizard.params.epochs == 2
    wizard.train_page.start_button.click()
    assert queue.wait(120), "training did not finish"
    assert wizard.record.status == "finished", wizard.record.message
    assert wizard.train_page.isComplete() and "loss" in wizard.train_page.curves
    assert len(wizard.train_page.curves["val loss"].points[0]) == 2  # one validation point per epoch
    wizard.next()
    metrics = [wizard.result_page.table.item(i, 0).text() for i in range(wizard.result_page.table.rowCount())]
    assert "validation_patches mask_iou" in metrics
    wizard.result_page.name.setText("phantom nuclei")
    saved = wizard.save_model()
    assert saved is not None and not list(saved.glob("checkpoint*"))
    card = json.loads((saved / "card.json").read_text())
    assert card["name"] == "phantom nuclei" and card["pipeline"] == "kaizen"
    assert load_kaizen_model(saved).patch == 24  # weights verified and loadable

    library = ModelLibrary(Settings())
    qtbot.addWidget(library)
    shown = [library.tree.topLevelItem(i) for i in range(library.tree.topLevelItemCount())]
    mine = [item for item in shown if item.text(0) == "phantom nuclei"]
    assert mine and mine[0].text(1) == "kaizen" and mine[0].text(5) == "yours"


def test_training_images_apply_edits_and_skip_excluded_objects(tmp_path):
    from app.core.edits import make_edit, write_edits

    project = make_project(tmp_path, n_images=1, with_run=True)
    run = project.runs()[0]
    write_edits(run.folder, [make_edit("restage_tubule", "section1", 1, "XII"),
                             make_edit("exclude_tubule", "section1", 2, True)])
    source = TrainingSource("corrected", "section1", run.folder / "section1" / "objects.json", run.folder,
                            project.image_path("section1"))
    [image] = training_images([source])
    classes = [o.category for o in image.objects]
    assert image.image_path == project.image_path("section1")
    assert classes.count("XII") == 2  # tubule 1 restaged (plus tubule 5, XII from the start)
    assert len([c for c in classes if c in ("I-V", "VI-VIII", "IX", "X-XI", "XII")]) == 5  # tubule 2 left out
    assert len(image.objects) == 5 + 36 and all(o.has_shape for o in image.objects[:5])
    objects_file = run.folder / "section1" / "objects.json"  # the pixel size the analysis used travels with it
    doc = json.loads(objects_file.read_text())
    doc.setdefault("meta", {})["pixel_size_um"] = 0.4
    objects_file.write_text(json.dumps(doc))
    assert training_images([source])[0].pixel_size_um == 0.4


def test_training_images_from_imported_files_find_their_images(tmp_path):
    from app.core.annotations import AnnotatedObject, ImageAnnotations, write_coco, write_geojson
    from app.core.errors import AnnotationError

    (tmp_path / "a.tif").write_bytes(b"")
    square = np.array([[10, 10], [20, 10], [20, 20], [10, 20]], float)
    obj = AnnotatedObject(1, "Sertoli", polygons=[square])
    write_coco(tmp_path / "coco.json", [ImageAnnotations("a.tif", 50, 50, [obj])])
    write_geojson(tmp_path / "a.geojson", [obj])
    for file in ("coco.json", "a.geojson"):
        [image] = training_images([TrainingSource("file", path=tmp_path / file)])
        assert image.image_path == tmp_path / "a.tif" and image.objects[0].category == "Sertoli"
    write_coco(tmp_path / "lost.json", [ImageAnnotations("missing.tif", 50, 50, [obj])])
    with pytest.raises(AnnotationError, match="missing.tif|not found"):
        training_images([TrainingSource("file", path=tmp_path / "lost.json")])


def test_stagetool_trainer_refuses_sources_without_its_classes(tmp_path):
    from app.core.annotations import AnnotatedObject, ImageAnnotations, write_coco
    from app.core.errors import AnnotationError
    from app.core.jobs import run

    (tmp_path / "a.tif").write_bytes(b"")
    box_only = AnnotatedObject(1, "Sertoli", box=(1, 1, 9, 9))
    write_coco(tmp_path / "cells.json", [ImageAnnotations("a.tif", 50, 50, [box_only])])
    trainer = pipelines()["stagetool"].trainers["stagetool-tubules"]
    with pytest.raises(AnnotationError, match="none of the chosen images has tubules"):
        run(trainer.train([TrainingSource("file", path=tmp_path / "cells.json")], trainer.params(), tmp_path / "m"))
    write_coco(tmp_path / "typo.json", [ImageAnnotations("a.tif", 50, 50, [AnnotatedObject(1, "Sertolli",
                                                                                            box=(1, 1, 9, 9))])])
    with pytest.raises(AnnotationError, match="Sertolli"):
        run(trainer.train([TrainingSource("file", path=tmp_path / "typo.json")], trainer.params(), tmp_path / "m"))


def test_brightfield_and_stagetool_trainers_write_models_from_annotation_files(tmp_path):
    """The other registered trainers, tiny settings: COCO files in, a model folder with a card out."""
    import tifffile

    from app.core.annotations import ImageAnnotations, labels_to_objects, write_coco
    from app.core.jobs import run
    from app.core.modelcard import load_model_card
    from app.core.phantoms import brightfield_stack
    from app.pipelines.stagetool.phantom import write_testis
    from app.pipelines.stagetool.truth import read_testis_truth

    stack = brightfield_stack(seed=1, size=96, count=8, n_planes=3)
    tifffile.imwrite(tmp_path / "field.tif", stack.planes.astype(np.float32), photometric="minisblack")
    write_coco(tmp_path / "field.json",
               [ImageAnnotations("field.tif", 96, 96, labels_to_objects(stack.labels, "nucleus"))])
    trainer = pipelines()["brightfield"].trainers["brightfield"]
    params = trainer.params(epochs=1, steps_per_epoch=2, batch_size=2, crop=32, width=4, depth=2, scale=1.0,
                            device="cpu", threads=1)
    folder = run(trainer.train([TrainingSource("file", path=tmp_path / "field.json")], params, tmp_path / "bf",
                               validation_fraction=0.25))
    card = load_model_card(folder)
    assert card.pipeline == "brightfield" and card.input_channels == 3
    assert card.metrics["validation"]["data"] == "bottom 25% strip of each training field"

    write_testis(tmp_path / "testis", seed=3, count=1, size=512)
    truth = read_testis_truth(tmp_path / "testis")[0]
    objects = list(truth["tubules"]) + list(truth["cells"])  # both layers in one file, as a corrected run has
    for number, obj in enumerate(objects, 1):
        obj.id = number
    write_coco(tmp_path / "testis.json", [ImageAnnotations(str(truth["image"]), 512, 512, objects)])
    trainer = pipelines()["stagetool"].trainers["stagetool-cells"]
    params = trainer.params(backbone="tiny", crop_size=128, epochs=1, crops_per_epoch=2, batch_size=1, val_crops=1,
                            device="cpu", threads=1)
    folder = run(trainer.train([TrainingSource("file", path=tmp_path / "testis.json")], params, tmp_path / "cells"))
    card = load_model_card(folder)
    assert card.pipeline == "stagetool-cells" and card.classes[0] == "Sertoli" and "val" in card.metrics
