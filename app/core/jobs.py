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
    """Prints one line per stage change and throttled updates with time left, for the CLI.

    Each stage keeps its own clock: when stages interleave (train, validate, train ...) the time
    left of a stage counts from its first event, not from the last switch, so it does not jump.
    A stage whose count goes back (a new epoch) starts its clock again.
    """

    def __init__(self, stream: Any = None, interval: float = 1.0) -> None:
        import sys

        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._stage = None
        self._starts: dict[str, tuple[float, int, int]] = {}  # stage -> (start time, done at start, last done)
        self._last = 0.0

    def time_left(self, event: Progress, now: float) -> float | None:
        """Seconds left in ``event``'s stage from its rate so far, or None when not yet known."""
        start, done0, last = self._starts.get(event.stage, (now, event.done, event.done))
        if event.done < last:
            start, done0 = now, event.done
        self._starts[event.stage] = (start, done0, event.done)
        if not event.total or event.done <= done0 or event.done >= event.total:
            return None
        return (now - start) / (event.done - done0) * (event.total - event.done)

    def __call__(self, event: Progress) -> None:
        now = time.monotonic()
        left = self.time_left(event, now)
        if event.stage != self._stage:
            self._stage, self._last = event.stage, 0.0
        final = bool(event.total) and event.done >= event.total
        if not final and now - self._last < self.interval:
            return
        self._last = now
        text = f"[{event.stage}]"
        if event.total:
            text += f" {event.done}/{event.total}"
            if left is not None:
                text += f" ~{left:.0f}s left"
        if event.message:
            text += f" {event.message}"
        print(text, file=self.stream, flush=True)
