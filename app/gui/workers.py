"""Background work for the GUI: job generators on a QThread, and short reads on a latest-wins thread.

:class:`JobWorker` drives one job generator (:mod:`app.core.jobs`) on its own QThread and reports
through signals only: throttled progress, the result, a readable error with a details log (the
traceback and the job's log records), or cancellation.  :class:`BackgroundRunner` runs short
functions (image reads, thumbnails, results files) on one daemon thread, newest request per key
first, and hands results back to the GUI thread through a queued signal.  Widgets never leave the
GUI thread and nothing here runs torch on it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PySide6.QtCore import QObject, QThread, Qt, Signal

from app.core.errors import UserError
from app.core.jobs import Progress, describe_error

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.05  # at most 20 progress signals a second reach the GUI thread
JOB_NICE = 10  # jobs run at a lower CPU priority than the GUI thread (Linux nice value)



def freeze_gc_heap() -> None:
    """Take every object alive now out of the cyclic garbage collector's scans (``gc.freeze``).

    With Qt, pyqtgraph and torch imported, a full collection walks ~250 000 objects and holds the
    interpreter lock for 100-250 ms in whichever thread triggers it, so the GUI thread stalls while a
    job allocates.  Objects alive after start-up live for the whole session: they need no scanning.
    Called once the window is up and again after torch is imported (device detection).
    """
    import gc

    gc.freeze()

class _ThreadLogHandler(logging.Handler):
    """Collects the log records of one thread into a list (the job's "details" log)."""

    def __init__(self, thread_id: int, lines: list[str]) -> None:
        super().__init__(logging.INFO)
        self.thread_id = thread_id
        self.lines = lines
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread_id:
            self.lines.append(self.format(record))


class JobWorker(QThread):
    """Runs ``factory()`` (a job generator, or a plain function) and pulls it to the end on this thread.

    Exactly one of ``succeeded``, ``failed`` or ``cancelled`` is emitted, then QThread's ``finished``.
    """

    progress = Signal(object)  # Progress
    succeeded = Signal(object)  # the job's return value
    failed = Signal(str, str)  # message for the user, details (traceback and log)
    cancelled = Signal()

    def __init__(self, factory: Callable[[], Any], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._factory = factory
        self._cancel = threading.Event()
        self.log_lines: list[str] = []

    def cancel(self) -> None:
        """Ask the job to stop at its next progress event (its ``finally`` blocks run)."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> None:  # noqa: D102 - QThread entry point
        lower_thread_priority()
        handler = _ThreadLogHandler(threading.get_ident(), self.log_lines)
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            self._drive()
        finally:
            root.removeHandler(handler)

    def _drive(self) -> None:
        job = None
        try:
            job = self._factory()
            if not hasattr(job, "__next__"):
                self.succeeded.emit(job)
                return
            result = self._pull(job)
        except _CancelledJob:
            self.cancelled.emit()
            return
        except UserError as error:
            self.failed.emit(str(error), self._details(error))
            return
        except Exception as error:  # noqa: BLE001 - every failure is shown to the user, never lost
            self.failed.emit(describe_error(error), self._details(error))
            return
        finally:
            if job is not None and hasattr(job, "close"):
                job.close()
        self.succeeded.emit(result)

    def _pull(self, job: Any) -> Any:
        last_emit, last_stage, last_message = 0.0, None, None
        while True:
            if self._cancel.is_set():
                job.close()
                raise _CancelledJob
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            if not isinstance(event, Progress):
                continue
            if event.message and event.message != last_message:
                self.log_lines.append(f"{time.strftime('%H:%M:%S')} [{event.stage}] {event.message}")
                last_message = event.message
            now = time.monotonic()
            final = bool(event.total) and event.done >= event.total
            if event.stage != last_stage or final or now - last_emit >= PROGRESS_INTERVAL_S:
                self.progress.emit(event)
                last_emit, last_stage = now, event.stage

    def _details(self, error: BaseException) -> str:
        lines = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return lines + ("\nLog:\n" + "\n".join(self.log_lines[-200:]) if self.log_lines else "")


def lower_thread_priority(nice: int = JOB_NICE) -> None:
    """Make the calling thread (and the threads it starts, e.g. torch's) yield the CPU to the GUI thread.

    On Linux each thread has its own nice value (QThread priorities are ignored there); elsewhere
    QThread's LowPriority is used.  Failure to change it is harmless.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        return
    except (AttributeError, OSError):
        pass
    thread = QThread.currentThread()
    if thread is not None:
        thread.setPriority(QThread.Priority.LowPriority)


class _CancelledJob(Exception):
    """Internal: the user cancelled the job."""


class BackgroundRunner(QObject):
    """One background thread for short reads; results come back to the GUI thread as signals.

    ``submit(key, fn, *args)`` replaces any not-yet-started request with the same key (the newest
    view of the image is the only one worth reading).  ``done(key, result)`` or
    ``error(key, message, details)`` is emitted on the thread that owns this object.
    """

    done = Signal(object, object)
    error = Signal(object, str, str)

    def __init__(self, parent: QObject | None = None, name: str = "stagescope-reader") -> None:
        super().__init__(parent)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._latest: dict[Any, int] = {}
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False

    @property
    def busy(self) -> bool:
        """Whether requests are queued or running."""
        with self._lock:
            return self._pending > 0

    def submit(self, key: Any, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the background unless a newer request with ``key`` arrives first."""
        if self._closed:
            return
        with self._lock:
            generation = self._latest.get(key, 0) + 1
            self._latest[key] = generation
            self._pending += 1
        self._executor.submit(self._run, key, generation, fn, args)

    def _run(self, key: Any, generation: int, fn: Callable[..., Any], args: tuple) -> None:
        try:
            with self._lock:
                stale = self._latest.get(key) != generation
            if stale or self._closed:
                return
            try:
                result = fn(*args)
            except Exception as error:  # noqa: BLE001 - reported to the GUI
                details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                self.error.emit(key, str(error) if isinstance(error, UserError) else describe_error(error), details)
                return
            with self._lock:
                stale = self._latest.get(key) != generation
            if not stale and not self._closed:
                self.done.emit(key, result)
        finally:
            with self._lock:
                self._pending -= 1

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the background with no result (e.g. closing a file after reads)."""
        if not self._closed:
            self._executor.submit(fn, *args)

    def shutdown(self, wait: bool = False) -> None:
        """Stop taking requests; queued ones are dropped."""
        self._closed = True
        self._executor.shutdown(wait=wait, cancel_futures=True)


def connect_queued(signal: Any, slot: Callable[..., Any]) -> None:
    """Connect with a queued connection, so a slot always runs on its object's (the GUI) thread."""
    signal.connect(slot, Qt.ConnectionType.QueuedConnection)
