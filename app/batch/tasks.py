"""One batch task on a worker: one image through one pipeline, its results renamed into place whole.

A :class:`Task` is plain data (paths, sha256 digests, parameter values) so it pickles small and
means the same on any machine that sees the shared output folder.  :func:`run_task` writes into
``OUT/.batch-tmp-<name>-<random>/`` and renames that folder to ``OUT/<name>/`` only when every
file is written, with ``task.json`` (what the results depend on, where and how long they took)
inside; so a worker killed mid-task leaves no ``OUT/<name>`` at all, only a temporary folder that
the runner removes.  The work itself is the pipeline's (app.pipelines.runner.analyze_item); models
are loaded once per worker process (app.pipelines.runner.cached_load), after the weights' sha256 was
checked against the digest the batch started with.

Kept free of torch and dask at import: a worker imports what the pipeline needs when it runs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from app.core.atomic import _fsync_dir, to_json_text
from app.core.errors import UserError
from app.core.jobs import Progress, run
from app.core.outputs import KeptReport
from app.core.republish import replace_folder
from app.pipelines.contract import Item
from app.pipelines.runner import (  # noqa: F401 - the batch's names for the runner's models and resume rule
    LOAD_COUNTS, ModelRef, analyze_item, cached_load, clear_model_cache, device_label, error_text, final_params,
    fingerprint, verify_weights,
)

TASK_FILE = "task.json"
TEMP_PREFIX = ".batch-tmp-"
OLD_PREFIX = ".batch-old-"


@dataclass(frozen=True)
class Task:
    """One image (``sources``: its file, or a brightfield field's plane files) for ``pipeline``, into ``out/name``.

    ``extras`` names further input files by role (a brightfield field's ``fluorescence`` image).
    """

    pipeline: str
    name: str
    sources: tuple[str, ...]
    out: str
    models: tuple[ModelRef, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    force: bool = False
    extras: dict[str, str] = field(default_factory=dict)
    module: str = ""  # the module that registers ``pipeline`` (a worker imports it when it does not know it)
    meta: dict[str, Any] = field(default_factory=dict)

    def item(self) -> Item:
        """The pipeline's work item this task carries."""
        return Item(self.name, self.sources, dict(self.extras), dict(self.meta))

    @property
    def folder(self) -> Path:
        """Where the finished results live."""
        return Path(self.out) / self.name


def read_task_file(folder: Path) -> dict[str, Any] | None:
    """The task.json of a finished image folder, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((folder / TASK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_finished(folder: Path, wanted: dict[str, Any]) -> bool:
    """Whether ``folder`` holds complete results made with the same inputs, models and parameters."""
    record = read_task_file(folder)
    return record is not None and record.get("fingerprint") == wanted


# ----------------------------------------------------------------------------- where we run


def worker_identity() -> dict[str, Any]:
    """The Dask worker's address (or "local"), host name and process id, for the summary."""
    address = "local"
    if "distributed" in sys.modules:
        try:
            from distributed import get_worker

            address = get_worker().address
        except ValueError:  # not inside a worker: the local batch
            pass
    return {"worker": address, "host": socket.gethostname(), "pid": os.getpid()}


# ----------------------------------------------------------------------------- atomic folders


def temp_folder(out: Path, name: str) -> Path:
    """A fresh hidden folder in ``out`` for one attempt at ``name``."""
    folder = out / f"{TEMP_PREFIX}{name}-{secrets.token_hex(4)}"
    folder.mkdir(parents=True)
    return folder


def publish(tmp: Path, final: Path, wanted: dict[str, Any], force: bool,
            kept: list[KeptReport] | None = None, drop: Sequence[str] = ()) -> bool:
    """Rename ``tmp`` to ``final``; False when another attempt already published the same results.

    An older ``final`` (other parameters, or ``force``) is renamed aside first and removed after,
    so ``final`` always names one complete set of results; the user's own files and changed
    reports in it are carried into the new set (app.core.republish; ``drop``: the pipeline's ``redo_drops``),
    each kept report added to ``kept``.
    """
    if final.exists():
        if not force and is_finished(final, wanted):
            return False
        (kept if kept is not None else []).extend(replace_folder(tmp, final, force, OLD_PREFIX, drop))
    else:
        try:
            os.rename(tmp, final)
        except OSError:  # another attempt won the race between our check and the rename
            if is_finished(final, wanted):
                return False
            raise
    _fsync_dir(final.parent)
    return True


def stale_temp_folders(out: Path) -> list[Path]:
    """Temporary folders left by attempts that never finished (killed workers, crashes)."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name.startswith((TEMP_PREFIX, OLD_PREFIX)))


def remove_stale(out: Path) -> list[str]:
    """Delete the leftovers of unfinished attempts; returns their names."""
    removed = []
    for folder in stale_temp_folders(out):
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed


# ----------------------------------------------------------------------------- the task


PROGRESS_TOPIC = "stagescope-batch-progress"
REPORT_INTERVAL_S = 0.5

Reporter = Callable[[str, Progress], None]
"""Receives (image name, progress event of the pipeline's job) while a task runs."""


def worker_reporter() -> Reporter | None:
    """On a Dask worker: send the task's progress to the client as worker events (at most 2 a second)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return None
    last = [0.0]

    def report(image: str, event: Progress) -> None:
        now = time.monotonic()
        if now - last[0] >= REPORT_INTERVAL_S:
            last[0] = now
            worker.log_event(PROGRESS_TOPIC, progress_message(image, event))

    return report


def progress_message(image: str, event: Progress) -> dict[str, Any]:
    """A task's progress as plain data (for worker events and the progress bar)."""
    return {"image": image, "stage": event.stage, "done": event.done, "total": event.total, "message": event.message}


def spec_of(task: Task) -> Any:
    """The registered spec of the task's pipeline, importing its module first on a worker that lacks it."""
    import importlib

    from app.pipelines import registry

    if task.module and task.pipeline not in registry.known():
        importlib.import_module(task.module)
    return registry.get(task.pipeline)


def run_task(task: Task, report: Reporter | None = None) -> dict[str, Any]:
    """Run one item on this worker and return its summary record; an error is recorded, never raised.

    ``report`` receives the pipeline's progress events (default: worker events on Dask, none here).

    Statuses: ``done`` (results published), ``skipped`` (finished before with the same fingerprint),
    ``duplicate`` (another attempt published first: ours was discarded), ``failed`` (``error`` says why).
    """
    started = time.time()
    record: dict[str, Any] = {"image": task.name, "source": task.sources[0] if task.sources else "",
                              **worker_identity(), "device": "", "started": started}
    final = task.folder
    if not task.force and is_finished(final, task.fingerprint):
        return {**record, "status": "skipped", "seconds": 0.0, "finished": time.time()}
    tmp = temp_folder(Path(task.out), task.name)
    try:
        spec = spec_of(task)
        params = spec.build_params(task.params)
        loaded, load_seconds, loaded_now = cached_load(spec, task.models, params)
        record.update(device=spec.device_of(loaded), load_seconds=round(load_seconds, 3), model_loaded=loaded_now)
        work_start = time.perf_counter()
        report = report or worker_reporter()
        on_progress = (lambda event: report(task.name, event)) if report else None
        stats = run(analyze_item(spec, task.item(), tmp, loaded, final_params(spec, params, loaded)), on_progress)
        record.update(stats=json.loads(to_json_text(stats)), work_seconds=round(time.perf_counter() - work_start, 3))
        record["seconds"] = round(time.time() - started, 3)
        record["finished"] = time.time()
        (tmp / TASK_FILE).write_text(to_json_text({**record, "status": "done", "fingerprint": task.fingerprint,
                                                   "models": [m.to_dict() for m in task.models]}), encoding="utf-8")
        kept: list[KeptReport] = []
        record["status"] = "done" if publish(tmp, final, task.fingerprint, task.force, kept,
                                                spec.redo_drops) else "duplicate"
        if kept:  # plain data: the batch tells app.core.outputs.collect_kept where it runs (not on a worker)
            record["kept"] = [{"kept": str(k.kept), "written": str(k.written), "reason": k.reason} for k in kept]
    except Exception as error:  # recorded in the summary; the batch goes on with the other images
        record.update(status="failed", error=error_text(error), seconds=round(time.time() - started, 3),
                      finished=time.time())
        if not isinstance(error, UserError):
            record["traceback"] = traceback.format_exc()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record
