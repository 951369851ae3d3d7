"""Long work as generators of typed progress events, shared by the CLI, the GUI and batches.

A job is a generator function: it yields :class:`Progress` events and *returns* its result
(``return value`` inside the generator).  The consumer decides the pace: when it stops
pulling (``close()``), the generator gets ``GeneratorExit`` at its current ``yield`` and its
``finally`` blocks clean up.  :func:`run` drains a job for the CLI and tests; the GUI drives the
same generator from a worker thread.  This is the shape StarDist used for tiled prediction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of a job: ``done`` of ``total`` units of ``stage`` (total 0 = unknown)."""

    stage: str
    done: int = 0
    total: int = 0
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        """Completed share of this stage, or None when the total is unknown."""
        return self.done / self.total if self.total else None


Job = Generator[Progress, None, T]


class Cancelled(Exception):
    """Raised by :func:`run` when the ``cancelled`` callback asked the job to stop."""


def run(
    job: Job[T],
    on_progress: Callable[[Progress], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> T:
    """Drain ``job`` and return its result, reporting each event and honouring cancellation.

    Cancellation closes the generator (its ``finally`` blocks run) and raises :class:`Cancelled`.
    """
    try:
        while True:
            if cancelled is not None and cancelled():
                job.close()
                raise Cancelled("cancelled by user")
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            if on_progress is not None:
                on_progress(event)
    finally:
        job.close()


class ConsoleProgress:
    """Prints one line per stage change and throttled updates with time left, for the CLI."""

    def __init__(self, stream: Any = None, interval: float = 1.0) -> None:
        import sys

        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._stage = None
        self._stage_start = 0.0
        self._last = 0.0

    def __call__(self, event: Progress) -> None:
        now = time.monotonic()
        if event.stage != self._stage:
            self._stage, self._stage_start, self._last = event.stage, now, 0.0
        final = bool(event.total) and event.done >= event.total
        if not final and now - self._last < self.interval:
            return
        self._last = now
        text = f"[{event.stage}]"
        if event.total:
            text += f" {event.done}/{event.total}"
            if 0 < event.done < event.total:
                left = (now - self._stage_start) / event.done * (event.total - event.done)
                text += f" ~{left:.0f}s left"
        if event.message:
            text += f" {event.message}"
        print(text, file=self.stream, flush=True)
