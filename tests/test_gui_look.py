"""How the GUI looks and reads: colours told apart (also with deuteranopia), legend names whole,
properties in one coordinate order with units, a sane zoom text, and forms and dialogs a biologist reads.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from skimage.color import deltaE_ciede2000, rgb2lab  # noqa: E402

from app.pipelines.stagetool.classes import (  # noqa: E402
    CELL_TYPES, CLASS_COLOURS, EXCLUDED_COLOUR, SELECTION_COLOUR, STAGES,
)
from gui_testing import main_window  # noqa: E402

# Machado, Oliveira & Fernandes 2009, deuteranomaly at severity 1.0 (deuteranopia), applied to linear RGB.
MACHADO_DEUTERANOPIA = np.array([[0.367322, 0.860646, -0.227968],
                                 [0.280085, 0.672501, 0.047413],
                                 [-0.011820, 0.042940, 0.968881]])


def _srgb(colour: str) -> np.ndarray:
    text = colour.lstrip("#")
    return np.array([int(text[i:i + 2], 16) for i in (0, 2, 4)], float) / 255


def _deuteranopia(rgb: np.ndarray) -> np.ndarray:
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    seen = np.clip(linear @ MACHADO_DEUTERANOPIA.T, 0, 1)
    return np.where(seen <= 0.0031308, 12.92 * seen, 1.055 * seen ** (1 / 2.4) - 0.055)


def _delta_e(a: str, b: str, deuteranopia: bool = False) -> float:
    rgb = [_srgb(a), _srgb(b)]
    if deuteranopia:
        rgb = [_deuteranopia(c) for c in rgb]
    lab = [rgb2lab(c.reshape(1, 1, 3)).reshape(3) for c in rgb]
    return float(deltaE_ciede2000(lab[0], lab[1]))


def _worst_pairs(colours: dict[str, str]) -> list[str]:
    """Pairs closer than CIEDE2000 10 (normal vision) or 6 (simulated deuteranopia)."""
    bad = []
    for (na, a), (nb, b) in itertools.combinations(colours.items(), 2):
        normal, deutan = _delta_e(a, b), _delta_e(a, b, deuteranopia=True)
        if normal < 10 or deutan < 6:
            bad.append(f"{na} {a} vs {nb} {b}: {normal:.1f} / deuteranopia {deutan:.1f}")
    return bad


def test_the_deuteranopia_simulation_reproduces_the_reported_clash():
    """The issue measured Spg #ffd93d vs Spc sec #fee440 at 1.5 under deuteranopia; so must this check."""
    assert _delta_e("#ffd93d", "#fee440") == pytest.approx(3.7, abs=0.1)
    assert _delta_e("#ffd93d", "#fee440", deuteranopia=True) == pytest.approx(1.5, abs=0.1)


def test_one_palette_tells_every_stage_and_cell_type_apart():
    """Stages, cell types, the excluded grey and the selection white: every pair >= 10, >= 6 deuteranopic."""
    from app.gui.overlays import EXCLUDED, class_colour

    assert set(CLASS_COLOURS) == set(STAGES) | set(CELL_TYPES)
    drawn = {name: class_colour("tubules" if name in STAGES else "cells", name, 0).name()
             for name in (*STAGES, *CELL_TYPES, EXCLUDED)}
    assert drawn[EXCLUDED] == EXCLUDED_COLOUR
    assert _worst_pairs({**drawn, "selection": SELECTION_COLOUR}) == []


def test_other_pipelines_classes_stand_apart_from_each_other_and_kaizens_picture():
    """Kaizen and brightfield classes cycle a palette; the first ones share a view with Kaizen's generated picture."""
    from app.gui.overlays import class_colour
    from app.gui.theme import GENERATED_COLOUR

    drawn = {f"class {i}": class_colour("objects", f"class {i}", i).name() for i in range(4)}
    assert _worst_pairs({**drawn, "generated objects": GENERATED_COLOUR, "selection": SELECTION_COLOUR,
                         "excluded": EXCLUDED_COLOUR}) == []


def _all_classes_document() -> dict:
    tubules = [{"id": i + 1, "class": stage, "score": 0.9, "box": [i * 300, 0, i * 300 + 200, 200],
                "polygon": [[i * 300, 0], [i * 300 + 200, 0], [i * 300 + 200, 200]], "area_px": 20000}
               for i, stage in enumerate(STAGES)]
    tubules.append({"id": 99, "class": STAGES[0], "excluded": True, "box": [0, 400, 100, 500], "area_px": 100})
    cells = [{"id": i + 1, "class": cell_type, "score": 0.8, "box": [i * 20, 50, i * 20 + 10, 60], "tubule_id": 1}
             for i, cell_type in enumerate(CELL_TYPES)]
    return {"image": "s", "pipeline": "stagetool", "layers": {"tubules": tubules, "cells": cells}, "meta": {}}


def test_legend_names_are_shown_whole_in_the_main_window(qtbot):
    """Every legend row's name (icon, indentation and text) fits its column, and the columns fit the dock."""
    from PySide6.QtWidgets import QApplication

    window = main_window(qtbot)
    try:
        window.viewer.overlays.set_document(_all_classes_document())
        QApplication.processEvents()
        tree = window.layers_panel.tree
        qtbot.waitUntil(lambda: tree.topLevelItemCount() == 2)
        QApplication.processEvents()
        metrics = tree.fontMetrics()
        names = []
        for i in range(tree.topLevelItemCount()):
            top = tree.topLevelItem(i)
            for item, depth in [(top, 0)] + [(top.child(j), 1) for j in range(top.childCount())]:
                names.append(item.text(0))
                needed = (tree.indentation() * (depth + 1) + tree.iconSize().width()
                          + metrics.horizontalAdvance(item.text(0)))
                width = tree.columnWidth(0)
                assert needed <= width, f"{item.text(0)!r} cut: needs {needed} px of {width}"
        assert "late elongating spermatid" in names and "excluded" in names
        columns = sum(tree.columnWidth(c) for c in range(tree.columnCount()))
        assert columns <= tree.viewport().width(), f"legend columns {columns} px in a {tree.viewport().width()} px view"
    finally:
        window.close()


TUBULE = {"id": 1, "class": "IX", "score": 0.8937, "box": [592, 276, 964, 624],
          "polygon": [[592, 276], [964, 276], [964, 624]],
          "centroid": [456.2, 772.0], "area_px": 108128, "stage_weights": {"IX": 0.511, "XII": 0.489}, "n_masks": 3,
          "excluded": False, "stage_source": "cells", "stage_from_cells": {"IX": 0.89}}
CELL = {"id": 7, "class": "Sertoli", "score": 0.99, "box": [736.0, 340.0, 758.0, 360.0], "centroid": [350.0, 747.0],
        "tubule_id": 1, "votes": 1, "antigen": {"SOX9": {"mean": 900.0, "q": 900.0}, "AR": {"mean": 10.0, "q": 10.0}}}
META = {"pixel_size_um": 0.5, "antibodies": [{"name": "SOX9", "threshold": 692.75}, {"name": "AR", "threshold": 100.0}]}


def _panel_rows(panel) -> dict[str, str]:
    tree = panel.tree
    return {tree.topLevelItem(i).text(0): tree.topLevelItem(i).text(1) for i in range(tree.topLevelItemCount())}


def test_properties_show_x_before_y_with_units_and_no_internal_fields(qtbot):
    from app.gui.properties_panel import PropertiesPanel

    panel = PropertiesPanel()
    qtbot.addWidget(panel)
    panel.show_object("tubules", TUBULE, {"cells": {"Spg": 2, "Sertoli": 4}}, META)
    rows = _panel_rows(panel)
    text = " ".join(rows) + " " + " ".join(rows.values())
    for internal in ("stage_weights", "stage weights", "n_masks", "n masks", "stage_from_cells", "votes"):
        assert internal not in text
    assert rows["stage"] == "IX"
    assert rows["area"] == "27\u2009032 µm²"  # 108128 px² x 0.25 µm²
    # the centroid is stored (y, x); box and centre are both shown x first, in pixels
    assert rows["centre"] == "x 772, y 456 px" and rows["box"] == "x 592-964, y 276-624 px"
    cells = next(panel.tree.topLevelItem(i) for i in range(panel.tree.topLevelItemCount())
                 if panel.tree.topLevelItem(i).text(0) == "cells")
    assert cells.text(1) == "6 in all" and (cells.child(0).text(0).strip(), cells.child(0).text(1)) == ("Sertoli", "4")

    panel.show_object("tubules", TUBULE, None, {"pixel_size_um": None})
    assert _panel_rows(panel)["area"].startswith("108\u2009128 px²")


def test_properties_say_whether_a_cell_is_positive_for_each_antibody(qtbot):
    from app.gui.properties_panel import PropertiesPanel

    panel = PropertiesPanel()
    qtbot.addWidget(panel)
    panel.show_object("cells", CELL, None, META)
    rows = _panel_rows(panel)
    assert rows["SOX9"].startswith("positive") and rows["AR"].startswith("negative")
    assert rows["centre"] == "x 747, y 350 px" and rows["tubule"] == "1" and rows["size"] == "11.0 × 10.0 µm"
    assert "votes" not in rows and "antigen" not in rows


def test_shortcuts_are_listed_at_once_not_behind_show_details(qtbot):
    from PySide6.QtWidgets import QApplication, QMessageBox

    window = main_window(qtbot, size=None)
    try:
        window.actions["shortcuts"].trigger()
        QApplication.processEvents()
        boxes = [w for w in window.findChildren(QMessageBox) if w.isVisible()]
        assert not boxes, "the shortcuts are in a message box (its list hides behind Show Details)"
        from app.gui.shortcuts_dialog import ShortcutsDialog

        [dialog] = [w for w in window.findChildren(ShortcutsDialog) if w.isVisible()]
        table = dialog.table
        assert table.isVisible() and table.rowCount() >= 10
        actions = {table.item(i, 0).text(): table.item(i, 1).text() for i in range(table.rowCount())}
        assert any("shortcuts" in text.lower() for text in actions)
        dialog.filter.setText("undo")
        shown = [table.item(i, 0).text() for i in range(table.rowCount()) if not table.isRowHidden(i)]
        assert shown and all("undo" in text.lower() or "undo" in actions[text].lower() for text in shown)
        dialog.close()
    finally:
        window.close()


def test_run_form_shows_basic_parameters_and_folds_the_rest(qtbot):
    """Stagetool's many parameters: the few a biologist changes first, the rest under a collapsed Advanced."""
    from app.gui.forms import DataclassForm
    from app.pipelines.stagetool.params import AnalyzeParams

    form = DataclassForm(AnalyzeParams)
    qtbot.addWidget(form)
    form.show()
    basic = [name for name, editor in form.editors.items() if editor.isVisible()]
    assert {"dapi", "tta"} <= set(basic) and len(basic) <= 8 < len(form.editors)
    # antibodies are ticked in the Run panel's channel list; the NAME=CHANNEL:T text is for thresholds
    assert "antibodies" not in basic and not form.is_basic("antibodies")
    assert form.advanced_button is not None and not form.advanced.isVisible()
    assert "overlap" not in basic and not form.is_basic("overlap") and form.is_basic("dapi")
    form.advanced_button.click()
    assert all(editor.isVisible() for editor in form.editors.values())
    assert form.values() == AnalyzeParams()  # folding changes nothing in the values


def test_forms_without_basic_fields_stay_flat(qtbot):
    from dataclasses import dataclass

    from app.gui.forms import DataclassForm

    @dataclass
    class Plain:
        a: int = 1
        b: float = 2.0

    form = DataclassForm(Plain)
    qtbot.addWidget(form)
    form.show()
    assert form.advanced_button is None and all(e.isVisible() for e in form.editors.values())


def _wizard(qtbot, tmp_path, metrics):
    from types import SimpleNamespace

    from app.core.settings import Settings
    from app.gui.job_queue import JobQueue
    from app.gui.training_sources import Trainer
    from app.gui.training_wizard import TrainingWizard
    from app.pipelines.stagetool.params import TrainParams

    project = SimpleNamespace(images=lambda: [], runs=lambda *a, **k: [], folder=tmp_path, annotations_dir=tmp_path)
    trainer = Trainer("stagetool-cells", "Stagetool cells", TrainParams, lambda *a, **k: iter(()))
    try:
        wizard = TrainingWizard(project, Settings(), JobQueue(), trainers={"stagetool-cells": trainer})
    except Exception as error:  # pragma: no cover - a project stand-in the wizard does not accept
        pytest.skip(f"wizard needs a real project here: {error}")
    qtbot.addWidget(wizard)
    result = tmp_path / "trained"
    result.mkdir(parents=True)
    (result / "card.json").write_text("{}")
    wizard.result_dir = result
    wizard.result_card = lambda: SimpleNamespace(metrics=metrics, name="cells v1")
    return wizard


def test_wizard_asks_once_for_the_validation_share_and_labels_fields_in_words(qtbot, tmp_path):
    from PySide6.QtWidgets import QLabel

    wizard = _wizard(qtbot, tmp_path, {})
    wizard.pipeline_page.list.setCurrentRow(0)
    wizard.params_page.initializePage()
    form = wizard.params_page.form
    assert "val_fraction" not in form.editors  # the Data page's split is the one control
    assert form.values().val_fraction == pytest.approx(0.2)
    labels = {label.text() for label in form.findChildren(QLabel)}
    assert not labels & {"LR", "Half", "Val fraction"}, labels
    assert "Learning rate" in labels and any(text.startswith("Half-precision") for text in labels)


def test_wizard_warns_before_saving_a_model_that_finds_nothing(qtbot, tmp_path):
    wizard = _wizard(qtbot, tmp_path, {"val": {"data": "2 sections", "AP50": 0.0, "AP75": 0.0}})
    asked = []
    wizard.confirm = lambda title, text: asked.append(text) or False
    wizard.result_page.initializePage()
    assert not wizard.result_page.warning.isHidden() and "AP50 = 0" in wizard.result_page.warning.text()
    wizard.result_page.name.setText("cells v1")
    assert wizard.save_model() is None and asked and "AP50 = 0" in asked[0]
    assert (tmp_path / "trained" / "card.json").exists()  # left where it was

    good = _wizard(qtbot, tmp_path / "good", {"val": {"AP50": 61.0, "dice": 0.7}})
    good.confirm = lambda *_: pytest.fail("a useful model needs no confirmation")
    good.result_page.initializePage()
    assert good.result_page.warning.isHidden()


def test_zoom_text_is_empty_until_an_image_is_fitted(qtbot, tmp_path):
    import tifffile

    from app.gui.main import configure_pyqtgraph
    from app.gui.channel_display import zoom_text
    from app.gui.tile_viewer import TileViewer

    assert zoom_text(1 / 704) == "70400%" and zoom_text(4.0) == "25%" and zoom_text(200.0) == "0.5%"
    assert zoom_text(0.0) == "" and zoom_text(float("nan")) == ""
    configure_pyqtgraph()
    viewer = TileViewer()
    qtbot.addWidget(viewer)
    viewer.resize(800, 600)
    viewer.show()
    viewer._range_changed()  # the empty view's range (0..1) would read as tens of thousands of percent
    assert viewer.zoom_label.text() == ""
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, (np.arange(400 * 600) % 251).reshape(400, 600).astype(np.uint16))
    viewer.open_image("img", path)
    assert viewer.zoom_label.text() == ""  # opening: not fitted yet
    qtbot.waitUntil(lambda: viewer.pyramid is not None and not viewer._opening, timeout=20000)
    text = viewer.zoom_label.text()
    assert text.endswith("%") and "e" not in text and 10 <= float(text[:-1]) <= 1000
