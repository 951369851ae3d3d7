"""Bad-input and fault trials of issue 18 that must stay fixed: code in checkpoints, concurrent writers,
stale resume fingerprints and wrongly typed project.json entries.

Each test failed on the code before the fix (see the commit); they use small files and no models.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.cli import main as cli_main
from app.core.errors import ProjectError, UserError
from app.core.project import Project, locked_project

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys) -> str:
    """The CLI's error: one last line of stderr, no traceback (progress lines may come before it)."""
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert "Traceback" not in err and lines and lines[-1].startswith("stagescope: error: "), err
    assert sum("error" in line.lower() for line in lines) == 1, err
    return lines[-1]


def write_tiffs(folder: Path, count: int, prefix: str = "img") -> list[Path]:
    """``count`` tiny distinct uint16 TIFFs."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = folder / f"{prefix}{i:02d}.tif"
        tifffile.imwrite(path, np.full((16, 16), i, dtype=np.uint16))
        files.append(path)
    return files


# ----------------------------------------------------------------------- 1. checkpoints run no code


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a harmless stand-in for a payload that runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _kaizen_train_cli(tmp_path: Path) -> list[str]:
    """A `kaizen train` command line on two small phantom images (it stops at the checkpoint)."""
    from app.core.phantoms import nuclei

    images, labels = tmp_path / "im", tmp_path / "lb"
    images.mkdir()
    labels.mkdir()
    for i in range(2):
        phantom = nuclei(seed=i, size=64, count=4, radius=(5.0, 7.0))
        tifffile.imwrite(images / f"n{i}.tif", phantom.image.astype(np.float32))
        tifffile.imwrite(labels / f"n{i}.tif", phantom.labels.astype(np.uint16))
    return ["kaizen", "train", str(images), str(labels), "--out", str(tmp_path / "model"), "--patch", "24",
            "--epochs", "1", "--val-percent", "0", "--device", "cpu"]


def test_checkpoint_with_a_pickled_payload_is_refused_and_the_payload_never_runs(tmp_path, capsys):
    import torch

    argv = _kaizen_train_cli(tmp_path)
    marker = tmp_path / "payload-ran"
    (tmp_path / "model").mkdir()
    torch.save({"model": {}, "state": {"step": 0}, "params": {}, "evil": _Payload(marker)},
               tmp_path / "model" / "checkpoint.pt")
    assert cli_main(argv) == 2
    assert "tampered" in one_line_error(capsys)
    assert not marker.exists()


def test_truncated_checkpoint_gives_one_line(tmp_path, capsys):
    import torch

    argv = _kaizen_train_cli(tmp_path)
    (tmp_path / "model").mkdir()
    checkpoint = tmp_path / "model" / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(1000)}, "state": {"step": 1}}, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    assert cli_main(argv) == 2
    assert "checkpoint is corrupt" in one_line_error(capsys)


@pytest.mark.parametrize("kind", ["payload", "truncated"])
def test_stagetool_checkpoint_that_does_not_load_is_one_line_and_runs_nothing(tmp_path, kind):
    import torch

    from app.core.errors import ModelError
    from app.pipelines.stagetool.train import _load_checkpoint

    marker, path = tmp_path / "payload-ran", tmp_path / "checkpoint.pt"
    torch.save({"step": 1, "evil": _Payload(marker)} if kind == "payload" else {"w": torch.zeros(1000)}, path)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ModelError) as caught:
        _load_checkpoint(path)
    assert len(str(caught.value).splitlines()) == 1 and not marker.exists()


def test_a_real_checkpoint_still_loads_weights_only(tmp_path):
    """The checkpoint the trainer writes holds only what weights_only accepts (so resuming keeps working)."""
    import torch

    from app.pipelines.kaizen.params import TrainParams
    from app.pipelines.kaizen.train import CHECKPOINT, VQVAE, PatchSampler, _save_checkpoint

    params = TrainParams(patch=24, target_diameter=10.0, channels=8, codebook_size=32, code_dim=8)
    model = VQVAE(params.vqvae_config())
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(2, 1, 24, 24)).mask_logit.sum().backward()
    optimiser.step()
    sampler = PatchSampler.__new__(PatchSampler)
    sampler.rng = np.random.default_rng(3)
    _save_checkpoint(tmp_path / CHECKPOINT, model, optimiser, sampler,
                     {"step": 1, "elapsed_s": 0.5, "history": [{"loss": 1.0}]}, params)
    payload = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert payload["state"]["step"] == 1 and payload["optimiser"]["state"]


def test_no_torch_load_in_app_allows_pickled_code():
    offenders = [f"{path.relative_to(ROOT)}:{n}" for path in (ROOT / "app").rglob("*.py")
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if "torch.load(" in line and "weights_only=True" not in line]
    assert offenders == []


# ----------------------------------------------------------------------- 2. concurrent writers


def _add_images(folder: str, files: list[str], start) -> int:
    """One writer: open the project, wait for the other, then add its images one by one."""
    project = Project.open(folder)
    start.wait(60)
    for file in files:
        project.add_image(file)
    return len(files)


def test_two_processes_adding_ten_images_each_keep_twenty(tmp_path):
    Project.create(tmp_path / "proj")
    files = [str(p) for p in write_tiffs(tmp_path / "in", 20)]
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Manager().Barrier(2)
    with ctx.Pool(2) as pool:  # both open the project before either adds: the old code kept only one's 10
        results = [pool.apply_async(_add_images, (str(tmp_path / "proj"), chunk, start))
                   for chunk in (files[:10], files[10:])]
        assert [r.get(180) for r in results] == [10, 10]
    images = Project.open(tmp_path / "proj").images()
    assert len(images) == 20 and len({e.name for e in images}) == 20


def test_two_cli_project_add_at_once_keep_every_image(tmp_path):
    Project.create(tmp_path / "proj")
    write_tiffs(tmp_path / "a", 10, "a")
    write_tiffs(tmp_path / "b", 10, "b")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "app", "project", "add", str(tmp_path / "proj"),
                               str(tmp_path / d), "--copy"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for d in ("a", "b")]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode()
        assert out.decode().count("added") == 10
    project = Project.open(tmp_path / "proj")
    assert len(project.images()) == 20
    assert all(project.image_path(e.name).is_file() for e in project.images())


def test_a_stale_project_object_keeps_what_another_writer_added(tmp_path):
    """The GUI holds a Project for hours; its changes apply to the file as it is now."""
    files = write_tiffs(tmp_path / "in", 3)
    gui = Project.create(tmp_path / "proj")
    gui.add_image(files[0])
    Project.open(tmp_path / "proj").add_image(files[1])  # the CLI, meanwhile
    gui.set_group("img00", "control")
    gui.add_image(files[2])
    with locked_project(tmp_path / "proj") as project:
        project.settings["note"] = "kept"
    again = Project.open(tmp_path / "proj")
    assert [e.name for e in again.images()] == ["img00", "img01", "img02"]
    assert again.image("img00").group == "control" and again.settings == {"note": "kept"}


def test_a_failed_change_saves_nothing(tmp_path):
    project = Project.create(tmp_path / "proj")
    before = project.path.read_bytes()
    with pytest.raises(RuntimeError):
        with project.locked():
            project.settings["half"] = "done"
            raise RuntimeError("interrupted")
    assert project.path.read_bytes() == before


_HOLD_BATCH = """
import sys
from app.batch import run_batch
print("started", flush=True)
run_batch("noop", [sys.argv[1]], sys.argv[2], params={"seconds": float(sys.argv[3])})
"""


@pytest.mark.slow
def test_a_second_batch_into_the_same_results_folder_is_refused_not_interleaved(tmp_path, capsys):
    write_tiffs(tmp_path / "in", 3)
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-c", _HOLD_BATCH, str(tmp_path / "in"), str(out), "1.5"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".batch-tmp-") for p in (out.iterdir() if out.is_dir() else [])):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode()
            time.sleep(0.05)
        # the old code ran this batch too: it removed the first one's unfinished folders and rewrote run.json
        code = cli_main(["batch", "analyze", "noop", str(tmp_path / "in"), "--out", str(out)])
        assert code == 2
        assert "being written by another" in one_line_error(capsys)
    finally:
        first.communicate(timeout=120)
    assert first.returncode == 0
    run = json.loads((out / "run.json").read_text())
    assert sorted(run["results"]) == ["img00", "img01", "img02"] and run["status"] == "finished"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["img00", "img01", "img02"]
    assert cli_main(["batch", "analyze", "noop", str(tmp_path / "in"), "--out", str(out)]) == 0  # free again


_HOLD_FOLDER = ("import sys\nfrom app.core.locks import results_writer\n"
                "with results_writer(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n")


def test_results_writer_is_exclusive_between_processes_and_reentrant_within_one(tmp_path, capsys):
    from app.core.locks import results_writer

    out = tmp_path / "out"
    section = write_tiffs(tmp_path / "in", 1)[0]
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_FOLDER, str(out)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"held"
        with pytest.raises(UserError, match="being written by another"):
            with results_writer(out):
                pass
        for command in (["kaizen", "segment"], ["brightfield", "segment"], ["stagetool", "analyze"]):
            assert cli_main([*command, str(section), "--out", str(out)]) == 2, command
            assert "being written by another" in one_line_error(capsys)
        assert sorted(p.name for p in out.iterdir()) == [".stagescope-writing.lock"]  # nothing else written
    finally:
        proc.communicate(b"", timeout=60)
    with results_writer(tmp_path / "out"):
        with results_writer(tmp_path / "out"):  # nested in one process: no self-deadlock
            pass


# ----------------------------------------------------------------------- 4. resume fingerprints use content


def test_batch_rerun_analyses_an_input_whose_bytes_changed_but_not_its_size(tmp_path):
    from app.batch import run_batch

    files = write_tiffs(tmp_path / "in", 2)
    out = tmp_path / "out"
    first = run_batch("noop", [tmp_path / "in"], out)
    assert first["counts"]["done"] == 2
    size = files[0].stat().st_size
    tifffile.imwrite(files[0], np.full((16, 16), 77, dtype=np.uint16))
    assert files[0].stat().st_size == size
    second = run_batch("noop", [tmp_path / "in"], out)
    status = {r["image"]: r["status"] for r in second["records"]}
    assert status == {"img00": "done", "img01": "skipped"}
    assert json.loads((out / "img00" / "task.json").read_text())["stats"]


def test_content_fingerprint_sees_a_change_between_samples_of_a_large_file(tmp_path):
    from app.core.fingerprint import FULL_HASH_BYTES, content_digest, file_fingerprint

    path = tmp_path / "big.raw"
    path.write_bytes(bytes(FULL_HASH_BYTES + 5_000_000))
    before = file_fingerprint(path)
    with open(path, "r+b") as handle:  # one byte at the very start: inside the first sampled block
        handle.write(b"\x01")
    assert content_digest(path) != before["sha256"]
    stamp = os.stat(path).st_mtime_ns
    os.utime(path, ns=(stamp, before["mtime_ns"] + 1))
    assert file_fingerprint(path) != before  # and the time stamp covers bytes between the samples
    assert file_fingerprint(tmp_path / "missing.tif") == {"file": "missing.tif", "bytes": None}


def test_stagetool_rerun_analyses_a_section_whose_bytes_changed_but_not_its_size(tmp_path, monkeypatch):
    """The second resume check (app/pipelines/stagetool/batch.py) holds the section's content too."""
    from app.core.runs import Run
    from app.pipelines.stagetool import batch

    files = write_tiffs(tmp_path / "in", 2)
    analysed = []

    def fake_analyze(path, section_dir, *args, **kwargs):
        analysed.append(Path(path).name)
        section_dir.mkdir(parents=True, exist_ok=True)
        return
        yield  # a generator, like the real one

    class Card:
        weights_sha256, name = "w" * 64, "fake"

    class Model:
        card = Card()

    monkeypatch.setattr(batch, "analyze_section", fake_analyze)
    monkeypatch.setattr(batch, "write_section_outputs", lambda *a, **k: {"n_tubules": 0, "n_cells": 0})
    monkeypatch.setattr(batch, "write_batch_outputs", lambda *a, **k: None)
    monkeypatch.setattr(batch, "_stored_fingerprint", lambda section_dir: batch.fingerprint(params, Model, Model))
    params = batch.AnalyzeParams()
    sections = [(f.stem, f) for f in files]

    def analyse() -> None:
        run = batch.open_run(tmp_path / "out", params, {})
        job = batch.run_sections(run, sections, Model, Model, params)
        try:
            while True:
                next(job)
        except StopIteration:
            pass

    analyse()
    assert analysed == ["img00.tif", "img01.tif"]
    size = files[1].stat().st_size
    tifffile.imwrite(files[1], np.full((16, 16), 99, dtype=np.uint16))
    assert files[1].stat().st_size == size
    analysed.clear()
    analyse()
    assert analysed == ["img01.tif"]
    assert Run.load(tmp_path / "out").source_of("img01")["sha256"]


# ----------------------------------------------------------------------- 7. wrongly typed project.json entries


@pytest.mark.parametrize("field, value", [
    ("channels", "DAPI"), ("channels", [1, 2]), ("path", 42), ("pixel_size_um", "0.5"), ("pixel_size_um", -1),
    ("pixel_size_um", True), ("name", 7), ("group", ["a"]), ("added", None),
])
def test_wrongly_typed_project_entries_are_refused_with_one_line(tmp_path, capsys, field, value):
    files = write_tiffs(tmp_path / "in", 1)
    project = Project.create(tmp_path / "proj")
    project.add_image(files[0])
    data = json.loads(project.path.read_text())
    data["images"][0][field] = value
    project.path.write_text(json.dumps(data))
    before = project.path.read_bytes()
    with pytest.raises(ProjectError, match=rf"images\[0\].*'{field}' must be"):
        Project.open(tmp_path / "proj")
    assert cli_main(["project", "list", str(tmp_path / "proj")]) == 2
    assert field in one_line_error(capsys)
    assert project.path.read_bytes() == before  # refused, not rewritten


def test_well_typed_entries_still_open(tmp_path):
    files = write_tiffs(tmp_path / "in", 1)
    project = Project.create(tmp_path / "proj")
    project.add_image(files[0])
    data = json.loads(project.path.read_text())
    data["images"][0].update(channels=["DAPI", "SOX9"], pixel_size_um=1, group=None)
    project.path.write_text(json.dumps(data))
    entry = Project.open(tmp_path / "proj").image("img00")
    assert entry.channels == ["DAPI", "SOX9"] and entry.pixel_size_um == 1.0
