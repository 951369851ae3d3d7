"""Batches on a Dask LocalCluster (worker processes on loopback): a worker killed mid-task loses nothing.

The fault test runs the ``noop`` pipeline slowly (``seconds``) so that a task is surely running
when its worker process is killed with SIGKILL; the scheduler reruns it on another worker and
every image must end with one complete folder.  Skipped only when dask.distributed is missing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")

from app.batch import run_batch  # noqa: E402
from app.batch.summary import REPORT_CSV  # noqa: E402
from app.batch.tasks import TEMP_PREFIX  # noqa: E402

pytestmark = pytest.mark.slow  # a local Dask cluster per module: seconds to start and stop

N_IMAGES = 8
TASK_SECONDS = 0.8


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes on 127.0.0.1 (no dashboard: it needs bokeh)."""
    import logging

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=logging.CRITICAL) as local:
        with distributed.Client(local) as client:
            yield local, client


def write_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    files = {}
    for i in range(N_IMAGES):
        files[f"img{i}"] = folder / f"img{i}.tif"
        tifffile.imwrite(files[f"img{i}"], np.full((16, 16 + i), i, dtype=np.uint8))
    (folder / "bad.tif").write_bytes(b"broken")
    return files


def kill_a_worker_mid_task(client, out: Path, timeout: float = 30.0) -> tuple[str, int, str]:
    """Wait for an image in progress (its temp folder with started.json), SIGKILL the worker running it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for folder in out.glob(f"{TEMP_PREFIX}img*"):
            if not (folder / "started.json").exists():
                continue
            image = folder.name[len(TEMP_PREFIX):].rsplit("-", 1)[0]
            for address, keys in client.processing().items():
                if any(f"-{image}-" in str(key) for key in keys):
                    pid = client.run(os.getpid, workers=[address])[address]
                    os.kill(pid, signal.SIGKILL)
                    return image, pid, address
        time.sleep(0.05)
    raise AssertionError("no task was seen running")


def test_worker_killed_mid_batch_every_image_complete_exactly_once(tmp_path, cluster):
    local, client = cluster
    files = write_images(tmp_path / "in")
    out = tmp_path / "out"
    outcome: dict = {}
    running: list[dict] = []

    def progress(event) -> None:
        if event.data.get("running"):
            running.append(event.data["running"])

    runner = threading.Thread(target=lambda: outcome.update(run_batch(
        "noop", [tmp_path / "in"], out, cluster=local.scheduler_address, params={"seconds": TASK_SECONDS},
        progress=progress)))
    runner.start()
    image, pid, address = kill_a_worker_mid_task(client, out)
    runner.join(timeout=60)
    assert not runner.is_alive() and outcome, "the batch finished"

    assert outcome["counts"] == {"done": N_IMAGES, "skipped": 0, "duplicate": 0, "failed": 1}
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(files)  # one folder per image, no temp or partial folders
    for name, path in files.items():
        result = json.loads((out / name / "result.json").read_text())
        assert result["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (out / name / "started.json").exists() and (out / name / "task.json").exists()
    records = {r["image"]: r for r in outcome["records"]}
    assert len(outcome["records"]) == N_IMAGES + 1  # each image reported once
    killed = records[image]
    assert killed["status"] == "done" and killed["pid"] != pid  # rerun by another worker process
    assert killed["worker_deaths"] >= 1
    assert any(name.startswith(f"{TEMP_PREFIX}{image}-") for name in outcome["stale_removed"])
    assert records["bad"]["status"] == "failed" and "bad.tif" in records["bad"]["error"]
    rows = list(csv.DictReader(io.StringIO((out / REPORT_CSV).read_text())))
    assert sorted(r["image"] for r in rows) == sorted([*files, "bad"])
    assert all(r["worker"].startswith("tcp://127.0.0.1:") for r in rows)
    assert outcome["dashboard"] is None or outcome["dashboard"].startswith("http")
    states = [state for snapshot in running for state in snapshot.values()]
    assert any(state.startswith("wait ") for state in states)  # per-task progress sent by the workers


def test_each_worker_loads_the_model_once(tmp_path, cluster):
    from app.core.phantoms import nuclei

    local, _ = cluster
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        tifffile.imwrite(folder / f"n{i}.tif", nuclei(seed=i, size=48, count=3).image.astype(np.float32))
    result = run_batch("kaizen", [folder], tmp_path / "out", cluster=local.scheduler_address,
                       params={"max_iterations": 2})
    assert result["counts"]["done"] == 4
    for address, row in result["workers"].items():
        assert row["model_loads"] == 1, (address, row)
        assert row["device"].startswith(("cpu", "cuda"))
    assert sum(row["images"] for row in result["workers"].values()) == 4
