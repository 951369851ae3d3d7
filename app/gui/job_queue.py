"""The job queue: jobs run one after another on worker threads, each with progress, time left and cancel.

:class:`JobQueue` is the model (no widgets): ``submit(title, factory)`` queues a job factory (a
function returning a job generator), starts it when the previous one ends and emits signals as it
progresses.  :class:`app.gui.job_queue_widget.JobQueueWidget` shows the queue in the job dock: progress bar, stage, time
left, cancel, and a details log for failures.  A queue of sections can be left running overnight;
the main window asks before it cancels them on close.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.core.jobs import Overall, OverallProgress, Progress
from app.gui.workers import JobWorker

STATUSES = ("queued", "running", "finished", "partly failed", "failed", "cancelled")
_ids = itertools.count(1)
# Worker threads have no Qt parent and are kept here until they have finished: a QThread deleted
# while it runs aborts the process, which a parent (a queue going away) could otherwise cause.
_LIVE_WORKERS: set[JobWorker] = set()


def _keep_alive(worker: JobWorker) -> None:
    """Hold ``worker`` until it has finished; drop the finished ones held so far."""
    for held in list(_LIVE_WORKERS):
        try:
            finished = held.isFinished()
        except RuntimeError:  # already deleted
            finished = True
        if finished:
            _LIVE_WORKERS.discard(held)
    _LIVE_WORKERS.add(worker)


@dataclass(eq=False)
class JobRecord:
    """One job in the queue and what is known about it so far."""

    title: str
    factory: Callable[[], Any]
    kind: str = ""
    lane: str = "main"  # jobs of one lane run one after another; lanes run side by side
    id: int = field(default_factory=lambda: next(_ids))
    status: str = "queued"
    progress: Progress | None = None
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    ended_at: float | None = None
    stage_started_at: float | None = None
    result: Any = None
    message: str = ""
    details: str = ""
    on_success: Callable[[Any], None] | None = None
    worker: JobWorker | None = field(default=None, repr=False)
    # outcome(result) -> (status, {item: one-line reason}) for a job that returns although some items failed
    outcome: Callable[[Any], tuple[str, dict[str, str]]] | None = None
    problems: dict[str, str] = field(default_factory=dict)  # item (image) -> why it failed
    tracker: OverallProgress = field(default_factory=OverallProgress, repr=False)
    overall: Overall = field(default_factory=Overall)  # progress over the whole job (all sections)
    overall_at: float | None = None  # when ``overall`` was last updated

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.status in ("queued", "running")

    def fraction(self) -> float | None:
        """Completed share of the whole job, over all its sections and stages (None when unknown)."""
        if self.progress is None:
            return None
        return self.overall.fraction

    def seconds_left(self) -> float | None:
        """Estimated time left in the whole job, counting down between progress events."""
        if self.status != "running" or self.overall.seconds_left is None or self.overall_at is None:
            return None
        return max(0.0, self.overall.seconds_left - (time.monotonic() - self.overall_at))

    def take(self, event: Progress) -> None:
        """Record a progress event: the stage's clock and the progress over the whole job."""
        if self.progress is None or self.progress.stage != event.stage:
            self.stage_started_at = time.monotonic()
        self.progress = event
        self.overall, self.overall_at = self.tracker.update(event), time.monotonic()

    def progress_text(self) -> str:
        """``Section 3 of 20 · finding cells 42% · about 12 min left`` while running, else the status."""
        if self.status != "running" or self.progress is None:
            return self.status
        left = self.seconds_left()
        return replace(self.overall, seconds_left=left).text() or "running"

    def elapsed(self) -> float:
        """Seconds since the job started (0 while queued)."""
        if self.started_at is None:
            return 0.0
        return (self.ended_at or time.monotonic()) - self.started_at


class JobQueue(QObject):
    """Runs submitted jobs one at a time on worker threads and reports through signals."""

    changed = Signal(object)  # JobRecord: added, started, progressed
    succeeded = Signal(object)  # JobRecord with .result
    failed = Signal(object)  # JobRecord with .message and .details
    cancelled = Signal(object)  # JobRecord
    idle = Signal()  # the queue ran dry

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.records: list[JobRecord] = []
        self._running: dict[str, JobRecord] = {}  # lane -> its running job

    # -- queries

    @property
    def running(self) -> JobRecord | None:
        """The running job of the main lane (else of any lane), or None."""
        return self._running.get("main") or next(iter(self._running.values()), None)

    def running_jobs(self) -> list[JobRecord]:
        return list(self._running.values())

    def pending(self) -> list[JobRecord]:
        """Jobs waiting their turn."""
        return [r for r in self.records if r.status == "queued"]

    def is_busy(self) -> bool:
        """Whether a job is running or waiting."""
        return bool(self._running) or bool(self.pending())

    def active_count(self) -> int:
        return sum(1 for r in self.records if r.active)

    # -- actions

    def submit(self, title: str, factory: Callable[[], Any], kind: str = "",
               on_success: Callable[[Any], None] | None = None, lane: str = "main",
               outcome: Callable[[Any], tuple[str, dict[str, str]]] | None = None) -> JobRecord:
        """Queue a job; ``on_success(result)`` runs on the GUI thread when it finishes.

        Jobs of a lane run one after another; a short job in another lane (e.g. building the
        overview of an image just opened) does not wait behind an overnight batch.  ``outcome(result)``
        says whether a job that returned had items fail (a run whose images failed): then the job ends
        "partly failed" or "failed" with its problems, and ``failed`` is emitted instead of ``succeeded``.
        """
        record = JobRecord(title=title, factory=factory, kind=kind, on_success=on_success, lane=lane,
                           outcome=outcome)
        self.records.append(record)
        self.changed.emit(record)
        QTimer.singleShot(0, self._start_next)
        return record

    def cancel(self, record: JobRecord) -> None:
        """Cancel a queued job at once, or ask a running one to stop at its next progress event."""
        if record.status == "queued":
            record.status, record.ended_at = "cancelled", time.monotonic()
            self.changed.emit(record)
            self.cancelled.emit(record)
        elif record.status == "running" and record.worker is not None:
            record.message = "cancelling..."
            record.worker.cancel()
            self.changed.emit(record)

    def cancel_all(self) -> None:
        """Cancel every queued and running job."""
        for record in list(self.records):
            if record.status == "queued":
                self.cancel(record)
        for record in list(self._running.values()):
            self.cancel(record)

    def clear_finished(self) -> None:
        """Forget jobs that ended."""
        self.records = [r for r in self.records if r.active]

    def wait(self, timeout_s: float = 30.0) -> bool:
        """Process events until the queue is idle (for tests and screenshots); False on timeout."""
        from PySide6.QtWidgets import QApplication

        end = time.monotonic() + timeout_s
        while self.is_busy():
            if time.monotonic() > end:
                return False
            QApplication.processEvents()
            workers = [r.worker for r in self._running.values() if r.worker is not None]
            if workers:
                workers[0].wait(20)
            else:
                time.sleep(0.005)
        QApplication.processEvents()
        return True

    def shutdown(self, timeout_ms: int = 5000) -> None:
        """Cancel everything and wait (bounded) for the running worker to stop."""
        from PySide6.QtCore import QCoreApplication

        self.cancel_all()
        for record in list(self._running.values()):
            if record.worker is not None:
                record.worker.wait(timeout_ms)
        for _ in range(3):  # deliver the worker's last signals so the records show how they ended
            QCoreApplication.sendPostedEvents()
            QCoreApplication.processEvents()

    # -- internals

    def _start_next(self) -> None:
        queued = self.pending()
        if not queued and not self._running:
            self.idle.emit()
            return
        for record in queued:
            if record.lane in self._running:
                continue
            self._start(record)

    def _start(self, record: JobRecord) -> None:
        worker = JobWorker(record.factory)
        _keep_alive(worker)
        record.worker = worker
        record.status = "running"
        record.started_at = record.stage_started_at = time.monotonic()
        self._running[record.lane] = record
        worker.progress.connect(self._on_progress)
        worker.succeeded.connect(self._on_succeeded)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        worker.finished.connect(self._on_thread_finished)
        self.changed.emit(record)
        worker.start()

    def _sender_record(self) -> JobRecord | None:
        """The running job whose worker emitted the signal being handled."""
        worker = self.sender()
        return next((r for r in self._running.values() if r.worker is worker), None)

    def _on_progress(self, event: Progress) -> None:
        record = self._sender_record()
        if record is None:
            return
        record.take(event)
        if record.message != "cancelling...":
            record.message = event.message
        self.changed.emit(record)

    def _end(self, status: str) -> JobRecord | None:
        record = self._sender_record()
        if record is not None:
            record.status, record.ended_at = status, time.monotonic()
        return record

    def _on_succeeded(self, result: Any) -> None:
        record = self._end("finished")
        if record is None:
            return
        record.result = result
        record.message = "done"
        self.changed.emit(record)
        if record.on_success is not None:
            try:
                record.on_success(result)
            except Exception as error:  # noqa: BLE001 - shown like any other failure
                import traceback

                record.status = "failed"
                record.message = f"{type(error).__name__}: {error}"
                record.details = traceback.format_exc()
                self.failed.emit(record)
                return
        status, problems = self._outcome(record, result)
        if problems:
            record.status, record.problems = status, problems
            first = next(iter(problems.items()))
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            record.message = f"{len(problems)} failed: {first[0]}: {first[1]}{more}"
            record.details = "\n".join(f"{item}: {why}" for item, why in problems.items())
            self.changed.emit(record)
            self.failed.emit(record)
            return
        self.succeeded.emit(record)

    @staticmethod
    def _outcome(record: JobRecord, result: Any) -> tuple[str, dict[str, str]]:
        """The job's verdict on its items (none failed when it has no ``outcome`` or cannot tell)."""
        if record.outcome is None:
            return "finished", {}
        try:
            status, problems = record.outcome(result)
        except Exception:  # noqa: BLE001 - a result that cannot be inspected counts as finished
            return "finished", {}
        return status, dict(problems or {})

    def _on_failed(self, message: str, details: str) -> None:
        record = self._end("failed")
        if record is None:
            return
        record.message, record.details = message, details
        self.changed.emit(record)
        self.failed.emit(record)

    def _on_cancelled(self) -> None:
        record = self._end("cancelled")
        if record is None:
            return
        record.message = "cancelled"
        self.changed.emit(record)
        self.cancelled.emit(record)

    def _on_thread_finished(self) -> None:
        record = self._sender_record()
        if record is not None and record.worker is not None:
            if record.status == "running":  # the thread ended without a verdict
                record.status, record.message = "failed", "the job stopped unexpectedly"
                self.failed.emit(record)
            record.worker = None  # the thread object is released by _keep_alive once finished
            self._running.pop(record.lane, None)
        QTimer.singleShot(0, self._start_next)
