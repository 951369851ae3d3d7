"""Batches without a cluster: one folder per image written whole, failures recorded, reruns skip, summaries.

Everything here runs in this process (no dask needed); tests/test_batch_cluster.py covers Dask.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.batch import run_batch
from app.batch.cluster import ClusterSpec, parse_cluster
from app.batch.progress import ProgressBar, format_seconds, time_left
from app.batch.summary import REPORT_CSV, REPORT_JSON
from app.batch.tasks import (
    LOAD_COUNTS, TASK_FILE, ModelRef, clear_model_cache, publish, read_task_file, stale_temp_folders,
    temp_folder, verify_weights,
)
from app.cli import main
from app.core.errors import ModelError, UserError
from app.core.jobs import Progress


def write_images(folder: Path, count: int, size: int = 48, bad: bool = True) -> dict[str, Path]:
    """``count`` small TIFFs (and one corrupt file named bad.tif) by image name."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(count):
        path = folder / f"img{i}.tif"
        tifffile.imwrite(path, np.full((size, size + i), i, dtype=np.uint16))
        files[path.stem] = path
    if bad:
        (folder / "bad.tif").write_bytes(b"not an image at all")
        files["bad"] = folder / "bad.tif"
    return files


def image_folders(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_dir())


def test_parse_cluster_settings():
    assert parse_cluster("") == ClusterSpec("")
    assert parse_cluster("tcp://10.0.0.5:8786") == ClusterSpec("scheduler", address="tcp://10.0.0.5:8786")
    assert parse_cluster("local:3") == ClusterSpec("local", workers=3)
    assert parse_cluster("SLURM:4", {"queue": "gpu"}) == ClusterSpec("slurm", workers=4, options={"queue": "gpu"})
    assert parse_cluster("pbs").workers == 1
    for bad in ("local", "local:0", "local:x", "kubernetes:2"):
        with pytest.raises(UserError):
            parse_cluster(bad)


def test_local_batch_writes_each_image_whole_records_failures_and_summaries(tmp_path):
    files = write_images(tmp_path / "in", 3)
    out = tmp_path / "out"
    result = run_batch("noop", [tmp_path / "in"], out)
    assert result["counts"] == {"done": 3, "skipped": 0, "duplicate": 0, "failed": 1}
    assert image_folders(out) == ["img0", "img1", "img2"]  # nothing for the corrupt file, no temp folders
    for name in ("img0", "img1", "img2"):
        saved = json.loads((out / name / "result.json").read_text())
        assert saved["sha256"] == hashlib.sha256(files[name].read_bytes()).hexdigest()
        assert saved["shape"] == [48, 48 + int(name[-1])]
        assert read_task_file(out / name)["worker"] == "local"
    rows = list(csv.DictReader(io.StringIO((out / REPORT_CSV).read_text())))
    assert [r["image"] for r in rows] == ["bad", "img0", "img1", "img2"]
    assert [r["status"] for r in rows] == ["failed", "done", "done", "done"]
    assert "bad.tif" in rows[0]["error"] and rows[1]["device"] == "cpu" and float(rows[1]["seconds"]) >= 0
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["totals"] == {"failed": 1, "done": 3}
    assert report["workers"]["local"]["images"] == 3 and report["workers"]["local"]["failed"] == 1
    run = json.loads((out / "run.json").read_text())
    assert sorted(run["results"]) == ["img0", "img1", "img2"] and list(run["failed"]) == ["bad"]
    assert run["results"]["img0"]["outputs"]["result"] == "img0/result.json"


def test_rerun_skips_finished_images_and_redoes_changed_parameters(tmp_path):
    write_images(tmp_path / "in", 2, bad=False)
    out = tmp_path / "out"
    first = run_batch("noop", [tmp_path / "in"], out)
    stamp = (out / "img0" / TASK_FILE).stat().st_mtime_ns
    again = run_batch("noop", [tmp_path / "in"], out)
    assert again["counts"]["skipped"] == 2 and again["counts"]["done"] == 0
    assert (out / "img0" / TASK_FILE).stat().st_mtime_ns == stamp  # not rewritten
    skipped = {r["image"]: r for r in again["records"]}
    assert skipped["img0"]["worker"] == "local" and skipped["img0"]["pid"] == first["records"][0]["pid"]
    changed = run_batch("noop", [tmp_path / "in"], out, params={"seconds": 0.01})
    assert changed["counts"]["done"] == 2  # another parameter value: results redone
    assert run_batch("noop", [tmp_path / "in"], out, params={"seconds": 0.01}, force=True)["counts"]["done"] == 2
    assert image_folders(out) == ["img0", "img1"]


def test_publish_is_all_or_nothing_and_keeps_one_copy(tmp_path):
    out = tmp_path / "out"
    wanted = {"pipeline": "noop", "params": {}}
    first = temp_folder(out, "a")
    (first / TASK_FILE).write_text(json.dumps({"fingerprint": wanted, "n": 1}))
    assert publish(first, out / "a", wanted, force=False) and not first.exists()
    second = temp_folder(out, "a")  # a retried attempt finishing after the first: discarded
    (second / TASK_FILE).write_text(json.dumps({"fingerprint": wanted, "n": 2}))
    assert not publish(second, out / "a", wanted, force=False)
    assert read_task_file(out / "a")["n"] == 1
    assert publish(second, out / "a", wanted, force=True)  # --force replaces the old folder whole
    assert read_task_file(out / "a")["n"] == 2
    assert image_folders(out) == ["a"] and stale_temp_folders(out) == []


def test_leftovers_of_a_killed_attempt_are_removed_and_never_count_as_done(tmp_path):
    write_images(tmp_path / "in", 1, bad=False)
    out = tmp_path / "out"
    partial = temp_folder(out, "img0")  # what a worker killed mid-task leaves behind
    (partial / "started.json").write_text("{}")
    result = run_batch("noop", [tmp_path / "in"], out)
    assert result["counts"]["done"] == 1
    assert image_folders(out) == ["img0"] and (out / "img0" / "result.json").exists()


def test_bad_parameters_models_and_names_are_refused_before_any_work(tmp_path):
    write_images(tmp_path / "in", 1, bad=False)
    with pytest.raises(UserError, match="seconds"):
        run_batch("noop", [tmp_path / "in"], tmp_path / "o", params={"speed": 2})
    with pytest.raises(UserError, match="unknown parameter"):
        run_batch("kaizen", [tmp_path / "in"], tmp_path / "o", params={"nonsense": 1})
    with pytest.raises(UserError, match="available"):
        run_batch("segment-everything", [tmp_path / "in"], tmp_path / "o")
    (tmp_path / "other").mkdir()
    tifffile.imwrite(tmp_path / "other" / "img0.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(UserError, match="same folder: img0"):
        run_batch("noop", [tmp_path / "in", tmp_path / "other"], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_worker_refuses_weights_that_changed_since_the_batch_started(tmp_path):
    from app.core.modelcard import resolve_model

    card = resolve_model("kaizen-nuclei", pipeline="kaizen")
    verify_weights(ModelRef("kaizen", card.name, str(card.folder), card.weights_sha256))
    with pytest.raises(ModelError, match="changed since the batch started"):
        verify_weights(ModelRef("kaizen", card.name, str(card.folder), "0" * 64))
    with pytest.raises(ModelError, match="not reachable"):
        verify_weights(ModelRef("kaizen", card.name, str(tmp_path / "elsewhere"), card.weights_sha256))


def test_kaizen_batch_loads_the_model_once_and_writes_what_kaizen_segment_writes(tmp_path):
    from app.core.phantoms import nuclei

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        tifffile.imwrite(folder / f"n{i}.tif", nuclei(seed=i, size=64, count=4).image.astype(np.float32))
    clear_model_cache()
    before = sum(LOAD_COUNTS.values())
    result = run_batch("kaizen", [folder], tmp_path / "out", params={"max_iterations": 3})
    assert result["counts"]["done"] == 2
    assert sum(LOAD_COUNTS.values()) - before == 1
    assert [r["model_loaded"] for r in sorted(result["records"], key=lambda r: r["image"])] == [True, False]
    for name in ("n0", "n1"):
        files = {p.name for p in (tmp_path / "out" / name).iterdir()}
        # the runner's one Kaizen layout (was <image>/<image>.tif here, <stem>.tif flat in `kaizen segment`)
        assert {"kaizen.tif", "kaizen.objects.npz", "kaizen.objects.json", "objects.json", TASK_FILE} <= files
    models = read_task_file(tmp_path / "out" / "n0")["models"]
    assert models[0]["name"] == "kaizen-nuclei" and len(models[0]["weights_sha256"]) == 64


def test_stagetool_batch_builds_the_batch_workbook_from_the_section_folders(tmp_path):
    from openpyxl import load_workbook
    from test_stagetool_cli import tiny_model

    from app.core.images import write_tiff

    rng = np.random.default_rng(0)
    write_tiff(tmp_path / "in" / "sec0.ome.tif", (rng.random((1, 80, 96)) * 3000).astype(np.uint16),
               axes="CYX", channel_names=["DAPI"])
    models = {"tubules": str(tiny_model(tmp_path / "tub", "tubules")),
              "cells": str(tiny_model(tmp_path / "cel", "cells"))}
    result = run_batch("stagetool", [tmp_path / "in"], tmp_path / "out", models=models,
                       params={"tta": "off", "threads": 1})
    assert result["counts"]["done"] == 1, result["records"]
    workbook = Path(result["outputs"]["workbook"])
    assert workbook == tmp_path / "out" / "batch.xlsx"
    rows = list(load_workbook(workbook, read_only=True)["Sections"].iter_rows(values_only=True))
    assert [row[0] for row in rows[1:] if row[0]] == ["sec0", "all sections"]  # a row per section, then the pool
    assert (tmp_path / "out" / "sec0" / "predictions.json").exists()
    assert (tmp_path / "out" / "sec0" / "sec0.xlsx").exists()
    assert json.loads((tmp_path / "out" / "batch_summary.json").read_text())  # stagetool's pooled tables


def test_progress_bar_shows_time_left_from_the_rate_so_far():
    assert format_seconds(42) == "42s" and format_seconds(185) == "3m05s" and format_seconds(7800) == "2h10m"
    assert time_left(10.0, 2, 10) == pytest.approx(40.0)  # 5 s per image, 8 to go
    assert time_left(10.0, 0, 10) is None and time_left(3.0, 4, 4) == 0.0
    stream = io.StringIO()
    bar = ProgressBar(stream, width=10)
    bar(Progress("images", 0, 4))
    bar(Progress("images", 2, 4, data={"record": {"image": "a", "status": "done", "worker": "w1",
                                                  "device": "cpu", "seconds": 1.5}}))
    text = stream.getvalue()
    assert "[#####.....] 2/4  50%" in text and "left" in text
    assert "a: done on w1 (cpu) in 1.5 s" in text


def test_cli_batch_analyze_prints_where_things_went(tmp_path, capsys):
    write_images(tmp_path / "in", 2)
    code = main(["batch", "analyze", "noop", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--param", "seconds=0"])
    stdout = capsys.readouterr().out
    assert code == 1  # one image failed
    assert "2 done, 0 already done, 1 failed" in stdout and "no dashboard" in stdout
    assert "FAILED bad" in stdout and "batch_report.csv" in stdout
    code = main(["batch", "analyze", "noop", str(tmp_path / "in" / "img0.tif"), "--out", str(tmp_path / "out"),
                 "--param", "seconds=0", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["counts"]["skipped"] == 1


def test_cli_cluster_options_fail_clearly(tmp_path, capsys):
    write_images(tmp_path / "in", 1, bad=False)
    code = main(["batch", "analyze", "noop", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                 "--scheduler", "10.0.0.5:8786"])
    assert code == 2 and "tcp://HOST:8786" in capsys.readouterr().err
    code = main(["batch", "analyze", "noop", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--param", "x"])
    assert code == 2 and "KEY=VALUE" in capsys.readouterr().err
    import importlib.util

    if importlib.util.find_spec("dask_jobqueue") is None:
        code = main(["batch", "analyze", "noop", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                     "--cluster", "slurm:2"])
        err = capsys.readouterr().err
        assert code == 2 and ("dask-jobqueue" in err or "dask[distributed]" in err)


def test_cancel_stops_the_image_in_progress_and_leaves_no_partial_folder(tmp_path):
    from app.core.jobs import Cancelled

    write_images(tmp_path / "in", 2, bad=False)
    out = tmp_path / "out"
    seen: list[dict] = []
    stop_at: list[float] = []

    def progress(event: Progress) -> None:
        if event.data.get("running"):
            seen.append(event.data["running"])
            stop_at.append(time.monotonic())

    with pytest.raises(Cancelled):
        run_batch("noop", [tmp_path / "in"], out, params={"seconds": 5}, progress=progress,
                  cancelled=lambda: bool(stop_at))
    assert time.monotonic() - stop_at[0] < 2.0  # the 5 s image stopped at its next step
    assert seen[0] == {"img0": seen[0]["img0"]} and seen[0]["img0"].startswith("wait ")  # per-task progress
    assert image_folders(out) == []  # neither a result folder nor a temporary one
    assert json.loads((out / "run.json").read_text())["status"] == "cancelled"


def test_kaizen_batch_equals_kaizen_segment(tmp_path):
    from app.core.phantoms import nuclei

    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "n0.tif", nuclei(seed=3, size=64, count=5).image.astype(np.float32))
    assert run_batch("kaizen", [folder], tmp_path / "batch")["counts"]["done"] == 1
    assert main(["kaizen", "segment", str(folder), "--out", str(tmp_path / "segment"), "--threads", "1"]) == 0
    # one layout for both (the runner's): the same bytes in the same place
    assert (tmp_path / "batch" / "n0" / "kaizen.tif").read_bytes() == (tmp_path / "segment" / "n0" / "kaizen.tif").read_bytes()


def test_brightfield_batch_on_a_real_field_equals_brightfield_segment(tmp_path, shared_data):
    field = shared_data / "brightfield-sephace" / "set2"
    if not field.is_dir():
        pytest.skip(f"real data absent: {field}")
    assert run_batch("brightfield", [field], tmp_path / "bf")["counts"]["done"] == 1
    assert main(["brightfield", "segment", str(field), "--out", str(tmp_path / "bfs")]) == 0
    batch_csv = (tmp_path / "bf" / "set2" / "nuclei.csv").read_text()
    assert batch_csv == (tmp_path / "bfs" / "set2" / "nuclei.csv").read_text()  # one layout (was set2_nuclei.csv)
    assert batch_csv.count("\n") > 2  # nuclei were found, with their fluorescence measured
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "bf" / "set2" / "labels.tif"),
                                  tifffile.imread(tmp_path / "bfs" / "set2" / "labels.tif"))


def test_brightfield_batch_with_every_field_given_keeps_the_model_cards_settings(tmp_path):
    """The GUI's run queue sends all SegmentParams fields; defaults must not undo the card (min_area 40 here)."""
    import dataclasses

    from app.core.phantoms import write_phantom
    from app.pipelines.brightfield.params import SegmentParams

    write_phantom("brightfield", tmp_path / "raw", seed=101, count=1, size=512)
    everything = {k: v for k, v in dataclasses.asdict(SegmentParams()).items() if v is not None}
    result = run_batch("brightfield", [tmp_path / "raw" / "field_000_planes.tif"], tmp_path / "out",
                       models={"brightfield": "brightfield-phantom-demo"}, params=everything)
    assert result["counts"]["done"] == 1
    rows = next((tmp_path / "out").rglob("nuclei.csv")).read_text().splitlines()
    assert len(rows) - 1 >= 20  # 30 drawn; with min_area 1000 from the defaults none would be left
