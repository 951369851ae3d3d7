

TUBULE = {"id": 1, "class": "IX", "score": 0.8937, "box": [592, 276, 964, 624], "polygon": [[592, 276], [964, 276], [964, 624]],
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
    panel.show_object("tubules", TUBULE, {"cells": {"Sertoli": 4}}, META)
    rows = _panel_rows(panel)
    text = " ".join(rows) + " " + " ".join(rows.values())
    for internal in ("stage_weights", "stage weights", "n_masks", "n masks", "stage_from_cells", "votes"):
        assert internal not in text
    assert rows["stage"] == "IX"
    assert rows["area"] == "27\u2009032 µm²"  # 108128 px² x 0.25 µm²
    # the centroid is stored (y, x); box and centre are both shown x first, in pixels
    assert rows["centre"] == "x 772, y 456 px" and rows["box"] == "x 592-964, y 276-624 px"
    assert "Sertoli: 4" in rows["cells"]

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
