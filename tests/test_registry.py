"""The shared per-image loop of pipeline runs: outputs recorded, and how a run ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.jobs import Progress, run
from app.pipelines.registry import analyze_images


class FakeRun:
    def __init__(self, folder: Path):
        self.folder, self.done, self.status = folder, {}, None

    def image_dir(self, name: str) -> Path:
        return self.folder / name

    def mark_image_done(self, name: str, outputs: dict) -> None:
        self.done[name] = outputs

    def finish(self, status: str) -> None:
        self.status = status


def one(name: str, folder: Path):
    yield Progress("work", 0, 1, name)
    if name == "bad":
        raise ValueError("bad image")
    return {"count": len(name), "folder": folder}


def test_each_image_is_recorded_and_the_run_finishes(tmp_path):
    fake = FakeRun(tmp_path)
    assert run(analyze_images(fake, ["a", "bb"], one)) == tmp_path
    assert fake.status == "finished"
    assert fake.done == {"a": {"count": 1, "folder": tmp_path / "a"}, "bb": {"count": 2, "folder": tmp_path / "bb"}}


def test_an_error_fails_the_run_and_keeps_what_finished(tmp_path):
    fake = FakeRun(tmp_path)
    with pytest.raises(ValueError):
        run(analyze_images(fake, ["a", "bad", "c"], one))
    assert fake.status == "failed" and list(fake.done) == ["a"]


def test_closing_the_job_cancels_the_run(tmp_path):
    fake = FakeRun(tmp_path)
    job = analyze_images(fake, ["a", "b"], one)
    next(job), next(job)  # the first image has started
    job.close()
    assert fake.status == "cancelled" and fake.done == {}


def test_the_failing_image_and_its_reason_are_recorded(tmp_path):
    from app.core.project import Project

    project = Project.create(tmp_path / "p")
    run_record = project.new_run("fake", {})
    with pytest.raises(ValueError):
        run(analyze_images(run_record, ["a", "bad"], one))
    loaded = project.get_run(run_record.id)
    assert loaded.status == "failed" and loaded.failed == {"bad": "bad image"} and list(loaded.results) == ["a"]
