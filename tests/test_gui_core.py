"""The GUI's Qt-free helpers in app/core: settings, curation edits, resolution pyramids."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.core import edits as E
from app.core.errors import UserError
from app.core.paths import settings_path
from app.core.settings import SETTINGS_SCHEMA_VERSION, Settings, load_settings, save_settings

# ----------------------------------------------------------------------------- settings


def test_settings_roundtrip_under_the_redirected_config_dir(tmp_path):
    assert settings_path().parent.name == "config"  # conftest points it at a temp folder
    settings = Settings(device="cpu", theme="dark")
    settings.add_recent_project(tmp_path / "a")
    settings.add_recent_project(tmp_path / "b")
    settings.add_recent_project(tmp_path / "a")
    settings.pipeline_params["kaizen"] = {"accept_margin": 0.25}
    written = save_settings(settings)
    assert written == settings_path()
    loaded = load_settings()
    assert loaded.device == "cpu" and loaded.theme == "dark"
    assert loaded.recent_projects == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert loaded.pipeline_params == {"kaizen": {"accept_margin": 0.25}}
    assert json.loads(written.read_text())["schema_version"] == SETTINGS_SCHEMA_VERSION


def test_settings_missing_file_gives_defaults():
    assert load_settings() == Settings()


def test_settings_migrate_from_unversioned_file():
    path = settings_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"recent": ["/x/p"], "gpu": False, "theme": "neon"}))
    loaded = load_settings()
    assert loaded.recent_projects == ["/x/p"]
    assert loaded.device == "cpu"
    assert loaded.theme == "system"  # an unknown theme falls back
    assert loaded.schema_version == SETTINGS_SCHEMA_VERSION


def test_corrupt_settings_are_set_aside_not_fatal():
    path = settings_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert load_settings() == Settings()
    assert not path.exists() and path.with_name("settings.json.corrupt").read_text() == "{not json"


def test_settings_wrong_types_fall_back_per_field():
    loaded = Settings.from_dict({"recent_projects": "oops", "device": 3, "theme": "light"})
    assert loaded.recent_projects == [] and loaded.device == "auto" and loaded.theme == "light"


def test_recent_projects_are_bounded():
    settings = Settings()
    for i in range(15):
        settings.add_recent_project(f"/p/{i}")
    assert len(settings.recent_projects) == 10 and settings.recent_projects[0].endswith("/p/14")


# ----------------------------------------------------------------------------- edits


def _doc():
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]
    far = [[20, 20], [30, 20], [30, 30], [20, 30]]
    return {"image": "s1", "layers": {
        "tubules": [{"id": 1, "class": "IX", "box": [0, 0, 10, 10], "polygon": square},
                    {"id": 2, "class": "XII", "box": [20, 20, 30, 30], "polygon": far}],
        "cells": [{"id": 1, "class": "Spg", "box": [1, 1, 3, 3], "tubule_id": 1},
                  {"id": 2, "class": "Sertoli", "box": [21, 21, 23, 23], "tubule_id": 2}]}}


def test_apply_edits_in_order_without_touching_the_original():
    doc = _doc()
    edits = [
        E.make_edit("restage_tubule", "s1", 1, "X-XI"),
        E.make_edit("exclude_tubule", "s1", 2, True),
        E.make_edit("retype_cell", "s1", 1, "Sertoli"),
        E.make_edit("delete_cell", "s1", 2),
        E.make_edit("add_cell", "s1", 3, "m2m", box=[24, 24, 28, 28]),
        E.make_edit("retype_cell", "other-image", 1, "m2m"),  # another image: ignored
    ]
    out = E.apply_edits(doc, edits)
    tubules = {t["id"]: t for t in out["layers"]["tubules"]}
    cells = {c["id"]: c for c in out["layers"]["cells"]}
    assert tubules[1]["class"] == "X-XI" and tubules[1]["original_class"] == "IX"
    assert tubules[2]["excluded"] is True
    assert set(cells) == {1, 3}
    assert cells[1]["class"] == "Sertoli"
    assert cells[3]["class"] == "m2m" and cells[3]["tubule_id"] == 2 and cells[3]["centroid"] == [26.0, 26.0]
    assert out["meta"]["edits_applied"] == 5
    assert doc["layers"]["tubules"][0]["class"] == "IX" and len(doc["layers"]["cells"]) == 2


def test_edits_on_missing_objects_are_skipped():
    out = E.apply_edits(_doc(), [E.make_edit("delete_cell", "s1", 99), E.make_edit("retype_cell", None, 1, "m2m")])
    assert out["meta"]["edits_applied"] == 1
    assert out["layers"]["cells"][0]["class"] == "m2m"


def test_edits_file_roundtrip_and_plain_list(tmp_path):
    edits = [E.make_edit("exclude_tubule", "s1", 1, True)]
    path = E.write_edits(tmp_path, edits)
    assert path == tmp_path / E.EDITS_FILE
    assert E.read_edits(tmp_path) == edits
    assert json.loads(path.read_text())["schema_version"] == 1
    (tmp_path / "list.json").write_text(json.dumps(edits))
    assert E.read_edits(tmp_path / "list.json") == edits
    assert E.read_edits(tmp_path / "missing") == []


@pytest.mark.parametrize("bad, words", [
    ({"action": "explode", "id": 1}, "unknown action"),
    ({"action": "delete_cell"}, "needs an 'id'"),
    ({"action": "retype_cell", "id": 1, "value": 3}, "class name"),
    ({"action": "add_cell", "id": 1, "value": "Spg"}, "box"),
])
def test_bad_edits_name_the_problem(tmp_path, bad, words):
    (tmp_path / "edits.json").write_text(json.dumps([bad]))
    with pytest.raises(UserError, match=words):
        E.read_edits(tmp_path)


def test_point_in_polygon_and_next_id():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    assert E.point_in_polygon(5, 5, square) and not E.point_in_polygon(15, 5, square)
    assert E.next_object_id([{"id": 4}, {"id": "7"}], [{"action": "add_cell", "id": 9}]) == 10


# ----------------------------------------------------------------------------- pyramid


def test_downsample2_block_means_with_odd_edges():
    from app.core.pyramid import downsample2

    a = np.arange(15, dtype=np.uint16).reshape(1, 3, 5)
    out = downsample2(a)
    assert out.shape == (1, 2, 3) and out.dtype == np.uint16
    assert out[0, 0, 0] == round((0 + 1 + 5 + 6) / 4)  # 3
    assert out[0, 1, 2] == 14  # corner: the last pixel repeated


def test_build_pyramid_streams_levels_and_reads_them(tmp_path):
    import tifffile

    from app.core.jobs import run
    from app.core.pyramid import build_pyramid, cache_ready, open_pyramid

    data = np.random.default_rng(0).integers(0, 4000, size=(2, 1500, 1100)).astype(np.uint16)
    source = tmp_path / "big.ome.tif"
    tifffile.imwrite(source, data, ome=True, metadata={"axes": "CYX"})
    cache = tmp_path / "cache"
    events = []
    run(build_pyramid(source, cache, min_side=256, strip_bytes=200_000), on_progress=events.append)
    assert cache_ready(source, cache)
    assert events[-1].done == events[-1].total > 0
    with open_pyramid(source, cache) as pyramid:
        factors = [level.factor for level in pyramid.levels]
        assert factors[:4] == [1.0, 2.0, 4.0, 8.0]
        assert (pyramid.levels[3].height, pyramid.levels[3].width) == (188, 138)
        assert pyramid.overview_level(max_side=600) == 2
        level1 = pyramid.read(1, (10, 20, 30, 50))
        expected = data[:, 20:60, 40:100].reshape(2, 20, 2, 30, 2).mean(axis=(2, 4))
        assert np.abs(level1.astype(float) - expected).max() <= 0.5
        assert pyramid.level_for(3.0) == 1 and pyramid.level_for(0.5) == 0
        full = pyramid.read(0, (1490, 1090, 1600, 1200))
        assert full.shape == (2, 10, 10)  # clipped to the image
    source.touch()  # a changed source invalidates the cache
    import os
    os.utime(source, ns=(1, 1))
    assert not cache_ready(source, cache)
    with open_pyramid(source, cache) as pyramid:
        assert len(pyramid.levels) == 1 and pyramid.needs_cache(max_side=600)
