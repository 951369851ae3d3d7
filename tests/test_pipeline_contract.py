"""One contract, one runner: a pipeline gives the same files through a project run (the GUI's path), its CLI
command and a Dask batch.

(a) A fourth pipeline from one folder (tests/toy_pipeline) runs through all three with nothing
edited outside its folder, and yields identical item folders.  (b) The three real pipelines
(tiny or shipped demo models) write byte-identical label files in the same layout through all three.
CLI and batch folders also hold ``task.json`` (the resume record: fingerprint, worker, times),
which a project run keeps in run.json instead; everything else must match byte for byte.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.cli import main
from app.core.jobs import run
from app.core.project import Project

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")

RESUME_RECORD = "task.json"


@pytest.fixture(scope="module")
def scheduler():
    """A two-worker local Dask cluster (the `--cluster local:2` of the CLI), shared by the tests here."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=logging.CRITICAL) as local:
        with distributed.Client(local) as client:
            yield client.scheduler.address


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of an item folder (but the resume record) by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != RESUME_RECORD}


def project_with(tmp_path: Path, files: list[Path]) -> Project:
    project = Project.create(tmp_path / "project")
    for file in files:
        project.add_image(file)
    return project


def three_ways(tmp_path: Path, scheduler: str, pipeline: str, inputs: list[Path], cli_args: list[str],
               params: object, batch_params: dict, models: dict[str, str] | None = None) -> dict[str, Path]:
    """The same inputs through a project run, `stagescope <pipeline> ...` and a 2-worker Dask batch."""
    from app.batch import run_batch
    from app.pipelines.registry import get

    project = project_with(tmp_path, inputs)
    spec = get(pipeline)
    names = [entry.name for entry in project.images()]
    project_run = Path(run(spec.analyze(project, names, params, models or {})))
    assert main([*cli_args, "--out", str(tmp_path / "cli")]) == 0
    result = run_batch(pipeline, inputs, tmp_path / "batch", cluster=scheduler, models=models, params=batch_params)
    assert result["counts"]["failed"] == 0, result["records"]
    assert len({r["worker"] for r in result["records"]}) >= 1
    return {"project": project_run, "cli": tmp_path / "cli", "batch": tmp_path / "batch"}


# ------------------------------------------------------------------------------- (a) a fourth pipeline


def blob_images(folder: Path, count: int = 4) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    files = []
    for i in range(count):
        image = rng.integers(0, 20, (48, 56)).astype(np.uint16)
        for y, x in rng.integers(6, 42, (3 + i, 2)):
            image[y - 3:y + 3, x - 3:x + 3] = 200
        files.append(folder / f"blobs{i}.tif")
        tifffile.imwrite(files[-1], image)
    return files


@pytest.mark.slow  # a local Dask cluster (shared by the module's cluster tests)
def test_a_fourth_pipeline_from_one_folder_runs_everywhere_with_identical_folders(tmp_path, scheduler):
    import toy_pipeline

    from app.pipelines.registry import get

    assert get("toy") is toy_pipeline.SPEC and toy_pipeline.SPEC.module == "toy_pipeline"
    files = blob_images(tmp_path / "in")
    ways = three_ways(tmp_path, scheduler, "toy", files, ["toy", "analyze", str(tmp_path / "in"), "--threshold", "2",
                                                          "--no-smooth"],
                      toy_pipeline.ToyParams(threshold=2.0, smooth=False), {"threshold": 2, "smooth": False})
    names = [f.stem for f in files]
    for way, folder in ways.items():
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == names, way
        assert json.loads((folder / "counts.json").read_text()) == json.loads(
            (ways["project"] / "counts.json").read_text()), way  # the spec's finish, everywhere
    for name in names:
        expected = folder_bytes(ways["project"] / name)
        assert set(expected) == {"labels.tif", "objects.json"}
        assert folder_bytes(ways["cli"] / name) == expected
        assert folder_bytes(ways["batch"] / name) == expected
        assert (ways["batch"] / name / RESUME_RECORD).exists() and (ways["cli"] / name / RESUME_RECORD).exists()
    assert tifffile.imread(ways["project"] / "blobs3" / "labels.tif").max() >= 3  # blobs were found
    runs = {way: json.loads((folder / "run.json").read_text()) for way, folder in ways.items()}
    assert all(doc["pipeline"] == "toy" and doc["status"] == "finished" and set(doc["results"]) == set(names)
               for doc in runs.values())


def test_a_failing_item_is_recorded_and_the_others_go_on_everywhere(tmp_path, capsys):
    """The one failure policy: record it, go on, report at the end (project run, CLI and batch)."""
    import toy_pipeline  # noqa: F401 - registers "toy"

    from app.batch import run_batch
    from app.pipelines.registry import get

    files = blob_images(tmp_path / "in", 3)
    project = Project.create(tmp_path / "project")
    for file in files:
        project.add_image(file, mode="copy")
    files[1].write_bytes(b"not a tiff")
    project.image_path("blobs1").write_bytes(b"not a tiff")

    result = run_batch("toy", files, tmp_path / "batch")
    assert result["counts"] == {"done": 2, "skipped": 0, "duplicate": 0, "failed": 1}
    assert main(["toy", "analyze", *map(str, files), "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert "1 of 3 item(s) failed (blobs1:" in err and len(err.strip().splitlines()[-1:]) == 1
    with pytest.raises(Exception, match="TIFF|tiff|not"):  # the unexpected error, raised after the others ran
        run(get("toy").analyze(project, ["blobs0", "blobs1", "blobs2"], get("toy").params(), {}))
    [project_run] = project.runs()
    for folder in (tmp_path / "batch", tmp_path / "cli", project_run.folder):
        doc = json.loads((folder / "run.json").read_text())
        assert doc["status"] == "failed" and set(doc["results"]) == {"blobs0", "blobs2"}, folder
        assert set(doc["failed"]) == {"blobs1"}, folder
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["blobs0", "blobs2"], folder


def test_resume_redoes_only_what_changed(tmp_path):
    """The one resume rule: same input contents, models and params -> skipped; a changed param -> redone."""
    import toy_pipeline  # noqa: F401

    files = blob_images(tmp_path / "in", 2)
    args = ["toy", "analyze", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--json"]
    assert main(args) == 0
    before = (tmp_path / "out" / "blobs0" / RESUME_RECORD).read_bytes()
    assert main(args) == 0
    assert (tmp_path / "out" / "blobs0" / RESUME_RECORD).read_bytes() == before  # skipped, not redone
    assert main([*args, "--min-area", "50"]) == 0
    assert (tmp_path / "out" / "blobs0" / RESUME_RECORD).read_bytes() != before
    tifffile.imwrite(files[1], np.zeros((48, 56), np.uint16))  # new content
    assert main([*args, "--min-area", "50"]) == 0
    assert tifffile.imread(tmp_path / "out" / "blobs1" / "labels.tif").max() == 0


# ------------------------------------------------------------------------------- (b) the three pipelines


@pytest.mark.slow  # a local Dask cluster (shared by the module's cluster tests)
def test_kaizen_writes_the_same_label_file_in_the_same_place_three_ways(tmp_path, scheduler):
    from app.core.phantoms import nuclei
    from app.pipelines.kaizen.params import DecomposeParams

    (tmp_path / "in").mkdir()
    files = []
    for i in range(2):
        files.append(tmp_path / "in" / f"n{i}.tif")
        tifffile.imwrite(files[-1], nuclei(seed=i, size=64, count=4).image.astype(np.float32))
    ways = three_ways(tmp_path, scheduler, "kaizen", files,
                      ["kaizen", "segment", str(tmp_path / "in"), "--max-iterations", "3", "--device", "cpu"],
                      DecomposeParams(max_iterations=3, device="cpu"), {"max_iterations": 3, "device": "cpu"})
    for name in ("n0", "n1"):
        labels = {way: (folder / name / "kaizen.tif").read_bytes() for way, folder in ways.items()}
        assert labels["cli"] == labels["project"] == labels["batch"], name
        assert tifffile.imread(ways["project"] / name / "kaizen.tif").max() > 0
        # every file byte for byte, but the generated object pictures: float32 renderings whose last bits
        # follow torch's thread count, which differs between this process and a Dask worker
        expected = folder_bytes(ways["project"] / name)
        stack = expected.pop("kaizen.objects.npz")
        for way in ("cli", "batch"):
            got = folder_bytes(ways[way] / name)
            other = got.pop("kaizen.objects.npz")
            assert got == expected, (way, name)
            with np.load(io.BytesIO(stack)) as a, np.load(io.BytesIO(other)) as b:
                assert a.files == b.files
                for key in a.files:
                    if a[key].dtype.kind == "f":
                        np.testing.assert_allclose(a[key], b[key], atol=1e-2, err_msg=f"{way} {name} {key}")
                    else:
                        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{way} {name} {key}")


@pytest.mark.slow  # a local Dask cluster (shared by the module's cluster tests)
def test_brightfield_writes_the_same_label_file_in_the_same_place_three_ways(tmp_path, scheduler):
    from app.core.phantoms import write_phantom
    from app.pipelines.brightfield.params import SegmentParams

    write_phantom("brightfield", tmp_path / "raw", seed=5, count=1, size=128)
    stack = tmp_path / "raw" / "field_000_planes.tif"
    model = {"brightfield": "brightfield-phantom-demo"}
    ways = three_ways(tmp_path, scheduler, "brightfield", [stack],
                      ["brightfield", "segment", str(stack), "--model", "brightfield-phantom-demo", "--device", "cpu"],
                      SegmentParams(device="cpu"), {"device": "cpu"}, models=model)
    name = "field_000_planes"
    labels = {way: (folder / name / "labels.tif").read_bytes() for way, folder in ways.items()}
    assert labels["cli"] == labels["project"] == labels["batch"]
    assert tifffile.imread(ways["project"] / name / "labels.tif").max() > 0
    expected = folder_bytes(ways["project"] / name)
    assert set(expected) == {"labels.tif", "nuclei.csv", "objects.json"}
    assert folder_bytes(ways["cli"] / name) == expected and folder_bytes(ways["batch"] / name) == expected


@pytest.mark.slow  # a local Dask cluster (shared by the module's cluster tests)
def test_stagetool_writes_the_same_objects_in_the_same_place_three_ways(tmp_path, scheduler):
    """Stagetool writes no label image: its objects (tubule outlines, cell boxes) and tables must match."""
    from test_stagetool_cli import tiny_model

    from app.core.images import write_tiff
    from app.pipelines.stagetool.params import AnalyzeParams

    rng = np.random.default_rng(0)
    section = tmp_path / "in" / "sec.ome.tif"
    section.parent.mkdir()
    write_tiff(section, (rng.random((2, 160, 200)) * 3000).astype(np.uint16), axes="CYX",
               channel_names=["DAPI", "SOX9"], pixel_size_um=0.5)
    tub, cel = tiny_model(tmp_path / "tub", "tubules"), tiny_model(tmp_path / "cel", "cells")
    models = {"tubules": str(tub), "cells": str(cel)}
    values = {"antibodies": "SOX9=1:1500", "overlap": 16, "threads": 1, "device": "cpu"}
    ways = three_ways(tmp_path, scheduler, "stagetool", [section],
                      ["stagetool", "analyze", str(section), "--tubule-model", str(tub), "--cell-model", str(cel),
                       "--antibody", "SOX9=1:1500", "--overlap", "16", "--threads", "1", "--device", "cpu"],
                      AnalyzeParams(**values), values, models=models)
    for way, folder in ways.items():
        doc = json.loads((folder / "sec" / "objects.json").read_text())
        expected = json.loads((ways["project"] / "sec" / "objects.json").read_text())
        assert doc["layers"] == expected["layers"] and doc["layers"]["cells"], way
        for table in ("tubules.csv", "cells.csv"):
            assert (folder / "sec" / table).read_bytes() == (ways["project"] / "sec" / table).read_bytes(), (way, table)


def test_models_load_once_per_process_and_one_set_per_pipeline_is_kept():
    """The runner's cache: the same models and load params load once; another set replaces the pipeline's old one."""
    import dataclasses

    import toy_pipeline

    from app.pipelines import runner

    spec = dataclasses.replace(toy_pipeline.SPEC, load_key=("threshold",))
    runner.clear_model_cache()
    before = len(toy_pipeline.LOADS)
    first = runner.cached_load(spec, (), toy_pipeline.ToyParams(threshold=1.0))[0]
    assert runner.cached_load(spec, (), toy_pipeline.ToyParams(threshold=1.0, min_area=9))[0] is first
    assert len(toy_pipeline.LOADS) - before == 1  # min_area does not change what load returns
    runner.cached_load(spec, (), toy_pipeline.ToyParams(threshold=2.0))
    assert len(toy_pipeline.LOADS) - before == 2
    assert [key for key in runner._MODEL_CACHE if key[0] == "toy"] == [("toy", (), ("2.0",))]
