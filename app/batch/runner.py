"""Dispatch a batch: images to tasks, tasks to this process or a Dask cluster, results into one run folder.

:func:`batch_job` is a job (app.core.jobs): it yields ``Progress("images", done, total)`` with
each finished image's record in ``data["record"]`` (and a heartbeat about once a second, so a
progress bar keeps its clock and a cancel is seen, carrying the running images' own progress in
``data["running"]``), and returns the batch result.  Images whose folder already holds results
with the same fingerprint are skipped before anything is sent.  Without a cluster the tasks run
one after another in a helper thread of this process, the same code a worker runs; a cancel
stops the image in progress at its next progress event.
On Dask, a worker that dies mid-task has its task rerun elsewhere by the scheduler (up to
``distributed.scheduler.allowed-failures`` deaths); a task that raises is recorded as failed by
the task itself.  ``run.json`` (app.core.project.Run) records done and failed images as they
arrive, the summary (:mod:`.summary`) and the pipeline's batch-wide outputs are written at the end.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from app.batch.cluster import ClusterSpec, dashboard_address, open_client, parse_cluster, workers_of
from app.batch.summary import worker_table, write_summary
from app.batch.tasks import (
    PROGRESS_TOPIC, Task, fingerprint, is_finished, progress_message, read_task_file, remove_stale, run_task,
)
from app.core.errors import UserError
from app.core.jobs import Cancelled, Job, Progress, run
from app.core.outputs import note_kept
from app.pipelines import registry
from app.pipelines.contract import PipelineSpec
from app.pipelines.runner import items_for, outputs_of, resolve_models, resume_values

HEARTBEAT_S = 1.0


def make_tasks(spec: PipelineSpec, inputs: Sequence[str | Path], out: Path, models: dict[str, str] | None,
               params: dict[str, Any], force: bool) -> list[Task]:
    """One task per item of ``inputs`` (the spec's ``expand``); bad names, models or parameters are refused here."""
    items = items_for(spec, inputs)
    refs = resolve_models(spec, models)
    built = spec.build_params(params)
    if spec.check is not None:
        spec.check(items, built)
    wanted = resume_values(spec, built)  # the full params (defaults too), so a default given or left out is the same
    return [Task(spec.name, item.name, item.sources, str(out), refs, dict(params),
                 fingerprint(spec.name, item.inputs(), refs, wanted), force, dict(item.extras), spec.module,
                 dict(item.meta))
            for item in items]


def reused_record(task: Task) -> dict[str, Any]:
    """The summary record of an image finished by an earlier run (its worker, device and time kept)."""
    previous = read_task_file(task.folder) or {}
    keep = ("worker", "host", "pid", "device", "seconds", "source", "stats")
    return {"image": task.name, **{k: previous.get(k) for k in keep}, "status": "skipped", "reused": True}


def open_run(out: Path, pipeline: str, params: dict[str, Any], tasks: Sequence[Task]) -> Any:
    """The run.json of ``out``: resumed when it exists (same pipeline), otherwise new."""
    from app.core.runs import Run, now_iso

    models = {m.kind: m.to_dict() for m in (tasks[0].models if tasks else ())}
    if (out / "run.json").exists():
        existing = Run.load(out)
        if existing.pipeline != pipeline:
            raise UserError(f"{out} holds a {existing.pipeline} run; choose another output folder for {pipeline}")
        existing.parameters, existing.models = params, models
        existing.resume()
        return existing
    created = Run(folder=out, id=out.name, pipeline=pipeline, parameters=params, models=models, started=now_iso())
    created.save()
    return created


# ----------------------------------------------------------------------------- executors


class Running:
    """The latest progress of each running task, filled from the task's thread or from worker events."""

    def __init__(self) -> None:
        self._latest: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def update(self, message: dict[str, Any]) -> None:
        """Record a task's progress message (see :func:`app.batch.tasks.progress_message`)."""
        with self._lock:
            self._latest[message["image"]] = message

    def finish(self, image: str) -> None:
        """Forget a task that ended."""
        with self._lock:
            self._latest.pop(image, None)

    def snapshot(self) -> dict[str, str]:
        """Image -> ``stage done/total`` for the progress bar."""
        with self._lock:
            return {image: f"{m['stage']} {m['done']}/{m['total']}" if m["total"] else m["stage"]
                    for image, m in self._latest.items()}


def _wait(future: Any, beat: list[float]) -> Iterator[None]:
    """Heartbeats (None) about once a second until the thread's ``future`` is done (no polling delay)."""
    from concurrent.futures import wait

    while not future.done():
        wait([future], timeout=max(0.0, HEARTBEAT_S - (time.monotonic() - beat[0])))
        if time.monotonic() - beat[0] >= HEARTBEAT_S:
            beat[0] = time.monotonic()
            yield None


def local_results(tasks: Sequence[Task], running: Running) -> Iterator[dict[str, Any] | None]:
    """Run the tasks one after another in a helper thread of this process (the plain local batch).

    The thread lets progress and heartbeats flow while an image is analysed; closing the generator
    stops the image in progress at its next progress event (its temporary folder is removed).
    """
    from concurrent.futures import ThreadPoolExecutor

    stop = threading.Event()

    def report(image: str, event: Progress) -> None:
        if stop.is_set():
            raise Cancelled("batch cancelled")
        running.update(progress_message(image, event))

    beat = [time.monotonic()]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stagescope-batch") as pool:
        try:
            for task in tasks:
                future = pool.submit(run_task, task, report)
                yield from _wait(future, beat)
                running.finish(task.name)
                yield future.result()
        finally:
            stop.set()  # a cancelled batch: the task in progress stops at its next event; the pool waits for it


def _killed_record(task: Task, error: BaseException) -> dict[str, Any]:
    """The record of a task Dask gave up on (its workers kept dying) or could not run."""
    from distributed import KilledWorker

    if isinstance(error, KilledWorker):
        message = "workers died while running it, too many times (KilledWorker); no results were kept"
    else:
        message = f"{type(error).__name__}: {error}"
    return {"image": task.name, "source": task.sources[0] if task.sources else "", "status": "failed",
            "error": message, "worker": "", "device": "", "seconds": None}


def dask_results(client: Any, tasks: Sequence[Task], running: Running) -> Iterator[dict[str, Any] | None]:
    """Submit every task and yield records as they finish (None as a heartbeat while waiting).

    Workers send their tasks' progress as events, which update ``running``.  Closing the generator
    cancels what is still queued or running.
    """
    from distributed import wait

    batch = secrets.token_hex(3)
    client.subscribe_topic(PROGRESS_TOPIC, lambda event: running.update(event[1]))
    futures = {client.submit(run_task, task, key=f"stagescope-{task.pipeline}-{task.name}-{batch}", pure=False): task
               for task in tasks}
    waiting = set(futures)
    deaths: dict[str, int] = {}
    beat = time.monotonic()
    try:
        while waiting:
            try:
                wait(list(waiting), timeout=max(0.01, HEARTBEAT_S - (time.monotonic() - beat)),
                     return_when="FIRST_COMPLETED")
            except (TimeoutError, asyncio.TimeoutError):
                pass
            ready = [f for f in waiting if f.done()]
            if time.monotonic() - beat >= HEARTBEAT_S:
                beat = time.monotonic()
                yield None
            if not ready:
                continue
            waiting.difference_update(ready)
            deaths.update(worker_deaths(client, [f.key for f in ready]))
            for future in ready:
                try:
                    record = future.result()
                except Exception as error:  # KilledWorker after repeated deaths, or the task could not be sent
                    record = _killed_record(futures[future], error)
                record["worker_deaths"] = deaths.get(future.key, 0)
                running.finish(record["image"])
                yield record
    finally:
        client.unsubscribe_topic(PROGRESS_TOPIC)
        remaining = [f for f in futures if not f.done()]
        if remaining:
            client.cancel(remaining)


def _warm_up(pipeline: str, module: str = "") -> float:
    """Import the pipeline's modules (on a worker); the seconds it took."""
    import importlib

    start = time.perf_counter()
    if module and pipeline not in registry.known():
        importlib.import_module(module)
    for name in registry.get(pipeline).warm_modules:
        importlib.import_module(name)
    return time.perf_counter() - start


def warm_up(client: Any, pipeline: str, module: str = "") -> dict[str, float]:
    """Import the pipeline's modules on every connected worker at once; seconds per worker.

    Keeps the first task's time honest (work, not imports); workers that join later import on
    their first task instead.
    """
    return {address: round(seconds, 3) for address, seconds in client.run(_warm_up, pipeline, module).items()}


def worker_deaths(client: Any, keys: Sequence[str]) -> dict[str, int]:
    """How many workers died while running each task (the scheduler's ``suspicious`` count)."""
    def count(dask_scheduler: Any, keys: Sequence[str]) -> dict[str, int]:
        tasks = dask_scheduler.tasks
        return {k: int(getattr(tasks[k], "suspicious", 0)) for k in keys if k in tasks}

    try:
        return client.run_on_scheduler(count, keys=list(keys))
    except Exception:  # not essential: an old scheduler without the attribute
        return {}


# ----------------------------------------------------------------------------- the batch


def batch_job(pipeline: str, inputs: Sequence[str | Path], out: str | Path, cluster: str | ClusterSpec = "",
              models: dict[str, str] | None = None, params: dict[str, Any] | None = None,
              force: bool = False, cluster_options: dict[str, Any] | None = None) -> Job[dict[str, Any]]:
    """Run ``pipeline`` on every image of ``inputs`` into ``out``; returns counts, records and report paths.

    Only one batch writes ``out`` at a time: a second one is refused (UserError) instead of removing
    the first one's unfinished folders and mixing its run.json and summary with them.
    """
    from app.core.locks import results_writer

    with ExitStack() as held:  # the lock is taken once the inputs are checked, and held to the end
        claim = lambda folder: held.enter_context(results_writer(folder))  # noqa: E731
        return (yield from _batch_job(pipeline, inputs, out, cluster, models, params, force, cluster_options, claim))


def _batch_job(pipeline: str, inputs: Sequence[str | Path], out: str | Path, cluster: str | ClusterSpec,
               models: dict[str, str] | None, params: dict[str, Any] | None, force: bool,
               cluster_options: dict[str, Any] | None, claim: Callable[[Path], Any]) -> Job[dict[str, Any]]:
    where = cluster if isinstance(cluster, ClusterSpec) else parse_cluster(cluster, cluster_options)
    spec = registry.get(pipeline)
    out = Path(out).absolute()
    params = dict(params or {})
    tasks = make_tasks(spec, inputs, out, models, params, force)
    claim(out)  # creates ``out``; refused while another batch writes there
    remove_stale(out)
    batch_run = open_run(out, pipeline, params, tasks)
    todo = [t for t in tasks if force or not is_finished(t.folder, t.fingerprint)]
    waiting = {t.name for t in todo}
    records = [reused_record(t) for t in tasks if t.name not in waiting]
    by_name = {t.name: t for t in tasks}
    running = Running()
    started, status, meta = time.time(), "failed", {"cluster": where.describe(), "dashboard": None}
    try:
        yield Progress("images", len(records), len(tasks),
                       f"{len(records)} already done, {len(todo)} to run" if records else "", item="image")
        with ExitStack() as stack:
            if where.kind and todo:
                client = stack.enter_context(open_client(where))
                meta.update(dashboard=dashboard_address(client), workers_at_start=workers_of(client))
                yield Progress("cluster", message=f"{where.describe()}: {len(meta['workers_at_start'])} workers "
                                                  f"connected; dashboard: {meta['dashboard'] or 'no dashboard'}")
                meta["warm_up_s"] = warm_up(client, pipeline, spec.module)
                yield Progress("cluster", message=f"workers ready ({pipeline} imported in "
                                                  f"{max(meta['warm_up_s'].values(), default=0):.1f} s)")
                results: Iterator[dict[str, Any] | None] = dask_results(client, todo, running)
            else:
                if where.kind:
                    meta["cluster"] = f"{where.describe()}, not started: nothing to run"
                results = local_results(todo, running)
            stack.callback(results.close)  # cancel the tasks before the client goes
            yield Progress("images", len(records), len(tasks), item="image")  # dispatch starts: the bar's clock too
            for record in results:
                if record is not None:
                    records.append(record)
                    _record_in_run(batch_run, by_name[record["image"]], record)
                    for kept in record.get("kept", ()):  # reports a redone image kept, for the CLI to say
                        note_kept(Path(kept["kept"]), Path(kept["written"]), kept["reason"])
                yield Progress("images", len(records), len(tasks), item="image",
                               data={"record": record} if record else {"running": running.snapshot()})
        status = "finished" if all(r["status"] != "failed" for r in records) else "failed"
    except GeneratorExit:
        status = "cancelled"
        raise
    finally:
        meta["stale_removed"] = remove_stale(out)
        batch_run.finish(status)
    finished = [r["image"] for r in records if r["status"] in ("done", "skipped", "duplicate")]
    skipped = sorted(r["image"] for r in records if r["status"] == "skipped")
    outputs = {k: str(v) for k, v in spec.finish(out, sorted(finished), spec.build_params(params), force,
                                                 skipped=skipped).items()}
    wall = round(time.time() - started, 3)
    report = write_summary(out, records, {"pipeline": pipeline, "folder": str(out), "wall_s": wall,
                                          "outputs": outputs, **meta})
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "skipped", "duplicate", "failed")}
    return {"folder": out, "counts": counts, "records": records, "workers": worker_table(records),
            "report": report, "outputs": outputs, "wall_s": wall, **meta}


def _record_in_run(batch_run: Any, task: Task, record: dict[str, Any]) -> None:
    """run.json: a finished image with its files, or a failed one with its error."""
    if record["status"] == "failed":
        batch_run.mark_image_failed(task.name, record.get("error", "failed"))
    else:
        batch_run.mark_image_done(task.name, outputs_of(task.folder, registry.get(task.pipeline).output_names))


def run_batch(pipeline: str, inputs: Sequence[str | Path], out: str | Path, cluster: str = "",
              models: dict[str, str] | None = None, params: dict[str, Any] | None = None,
              progress: Callable[[Progress], None] | None = None, cancelled: Callable[[], bool] | None = None,
              force: bool = False, cluster_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Drain :func:`batch_job` (the GUI calls this from a worker thread with its progress and cancel callbacks).

    ``cluster``: "" = here, "tcp://host:8786", "local:N", "slurm[:N]" or "pbs[:N]" (the ``batch_cluster`` setting).
    """
    return run(batch_job(pipeline, inputs, out, cluster, models, params, force, cluster_options), progress, cancelled)
