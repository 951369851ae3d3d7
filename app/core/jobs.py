"""Long work as generators of typed progress events, shared by the CLI, the GUI and batches.

A job is a generator function: it yields :class:`Progress` events and *returns* its result
(``return value`` inside the generator).  The consumer decides the pace: when it stops
pulling (``close()``), the generator gets ``GeneratorExit`` at its current ``yield`` and its
``finally`` blocks clean up.  :func:`run` drains a job for the CLI and tests; the GUI drives the
same generator from a worker thread.  This is the shape StarDist used for tiled prediction.

A job that works through several items (sections, images) says so with an *item event*:
``Progress("sections", i, n, name, item="section")`` before item ``i`` (0-based) of ``n``; the
events of other stages that follow are steps within that item.  :class:`OverallProgress` turns
the stream into progress over the whole job ("Section 3 of 20 · finding cells 42% · about
12 min left") for the Jobs dock and the command line.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of a job: ``done`` of ``total`` units of ``stage`` (total 0 = unknown).

    ``item`` names what one unit is ("section", "image") when this event counts the items a job
    works through: ``done`` is then the index of the item starting now and ``message`` its name.
    """

    stage: str
    done: int = 0
    total: int = 0
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    item: str = ""

    @property
    def fraction(self) -> float | None:
        """Completed share of this stage, or None when the total is unknown."""
        return self.done / self.total if self.total else None


Job = Generator[Progress, None, T]

# What a stage is called in the Jobs dock and on the command line: what the lab sees happening.
STAGE_WORDS: dict[str, str] = {
    "overview": "reading the section",
    "tubules": "finding tubules",
    "cells": "finding cells",
    "write": "saving results",
    "models": "loading models",
    "pyramid": "building zoom levels",
    "data": "reading annotations",
    "prepare": "preparing training images",
    "train": "training",
    "validate": "checking on held-out images",
    "save": "saving the model",
    "predict": "finding nuclei",
    "instances": "separating touching nuclei",
    "decompose": "finding objects",
    "read": "reading results",
    "cluster": "starting the workers",
    "wait": "waiting for a worker",
    "experiment": "training and testing",
    "sample project": "making the sample project",
}


def stage_words(stage: str) -> str:
    """The stage in the lab's words (the stage name itself when it has none)."""
    return STAGE_WORDS.get(stage, stage)


def format_duration(seconds: float) -> str:
    """``12 s``, ``4 min``, ``1 h 05 min``: rounded as a person would say it."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass(frozen=True)
class Overall:
    """Where a job stands as a whole: item ``item`` (0-based) of ``items``, its stage, time left."""

    stage: str = ""
    stage_fraction: float | None = None
    fraction: float | None = None  # of the whole job
    seconds_left: float | None = None  # for the whole job
    item: int = 0
    items: int = 0  # 0 = the job does not work through items
    noun: str = ""
    name: str = ""
    message: str = ""

    def text(self) -> str:
        """``Section 3 of 20 · finding cells 42% · about 12 min left`` (parts that are unknown left out)."""
        parts = []
        if self.items:
            if self.item >= self.items:
                parts.append(f"{self.items} of {self.items} {self.noun}s done" if self.noun else "all done")
            else:
                noun = (self.noun or "item").capitalize()
                parts.append(f"{noun} {self.item + 1} of {self.items}")
        if self.stage:
            words = stage_words(self.stage)
            if self.stage_fraction is not None:
                words += f" {int(100 * self.stage_fraction)}%"
            parts.append(words)
        if self.seconds_left is not None:
            parts.append(f"about {format_duration(self.seconds_left)} left")
        return " · ".join(parts)


class OverallProgress:
    """Follows a job's events and estimates its progress and time left over all items.

    Within an item, each stage's share of the item is learned from the items finished so far (by
    time), so "finding tubules" then "finding cells" fill one bar instead of two; on the first item,
    before anything is measured, each new stage takes half of what is left of the bar, and time left
    is the item's time so far plus its current stage's rest, times the items left (a lower bound
    until the first item ends).  Then time left is the mean time of the items that did work (items
    skipped as already done do not count) times the items left.  A job without items gets the time left of its current stage (each stage keeps its
    own clock, so interleaved train/validate stages do not make it jump).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.noun, self.items, self.item, self.name = "", 0, 0, ""
        self._item_start: float | None = None
        self._worked = False  # the current item had events of its own stages
        self._stages: list[str] = []  # stages of the current item, in order
        self._stage_time: dict[str, float] = {}  # seconds per stage in the current item
        self._stage = ""
        self._stage_since: float | None = None
        self._shares: dict[str, float] = {}  # learned: each stage's share of an item's time
        self._order: list[str] = []  # learned: the stage order of a worked item
        self._durations: list[float] = []  # seconds of each item that did work
        self._any_inner = False
        self._first_item: tuple[float, float] | None = None  # (time, fraction) at the first item event
        self._first_guess: tuple[float, float] | None = None  # (time, seconds left) during the first worked item
        self._clocks: dict[str, tuple[float, int, int]] = {}  # stage -> (start, done at start, last done)
        self.last = Overall()

    # -- the stream

    def update(self, event: Progress, now: float | None = None) -> Overall:
        """Take one event; returns where the job stands now."""
        now = self.clock() if now is None else now
        if event.item and event.total:
            self._on_item(event, now)
            fraction = min(1.0, event.done / event.total)
            if self._first_item is None:
                self._first_item = (now, fraction)
            self.last = Overall(fraction=fraction, seconds_left=self._left(now, 0.0), item=self.item,
                                items=self.items, noun=self.noun, name=self.name, message=event.message)
            return self.last
        stage_left = self._stage_clock(event, now)
        self._on_stage(event.stage, now)
        if not self.items or self.item >= self.items:  # no items, or outside them (before, after)
            self.last = Overall(stage=event.stage, stage_fraction=event.fraction, fraction=event.fraction,
                                seconds_left=stage_left, message=event.message, noun=self.noun)
            return self.last
        self._worked = self._any_inner = True
        within = self._within_item(event.stage, event.fraction or 0.0)
        fraction = (self.item + within) / self.items
        self.last = Overall(stage=event.stage, stage_fraction=event.fraction, fraction=fraction,
                            seconds_left=self._left(now, within, stage_left), item=self.item, items=self.items,
                            noun=self.noun, name=self.name, message=event.message)
        return self.last

    def _on_item(self, event: Progress, now: float) -> None:
        if self._item_start is not None and event.done != self.item:
            self._close_item(now)
        if self._item_start is None or event.done != self.item:
            self._item_start, self._worked, self._stages, self._stage_time = now, False, [], {}
            self._stage, self._stage_since = "", None
        self.noun, self.items, self.item, self.name = event.item, event.total, event.done, event.message

    def _close_item(self, now: float) -> None:
        """Learn from the item that just ended (if it did work)."""
        self._on_stage("", now)
        if not self._worked or self._item_start is None:
            return
        duration = now - self._item_start
        self._durations.append(duration)
        total = sum(self._stage_time.values())
        if total > 0:
            shares = {s: t / total for s, t in self._stage_time.items()}
            n = len(self._durations)  # running mean of the shares over worked items
            keys = set(shares) | set(self._shares)
            self._shares = {s: (self._shares.get(s, 0.0) * (n - 1) + shares.get(s, 0.0)) / n for s in keys}
            self._order = list(self._stages)

    def _on_stage(self, stage: str, now: float) -> None:
        """Book the time spent in the previous stage of this item."""
        if stage == self._stage:
            return
        if self._stage and self._stage_since is not None:
            self._stage_time[self._stage] = self._stage_time.get(self._stage, 0.0) + now - self._stage_since
        self._stage, self._stage_since = stage, now
        if stage and stage not in self._stages:
            self._stages.append(stage)

    def _within_item(self, stage: str, stage_fraction: float) -> float:
        """Share of the current item done, from learned stage shares (or halving on the first item)."""
        stage_fraction = min(max(stage_fraction, 0.0), 1.0)
        if self._shares and stage in self._shares:
            before = sum(self._shares.get(s, 0.0) for s in self._order[:self._order.index(stage)]) \
                if stage in self._order else 0.0
            return min(1.0, before + self._shares[stage] * stage_fraction)
        if self._shares:  # a stage never seen before: stay where the known stages put us
            return min(1.0, sum(self._shares.get(s, 0.0) for s in self._stages if s != stage))
        k = self._stages.index(stage) if stage in self._stages else len(self._stages)
        return 1.0 - 0.5 ** k * (1.0 - 0.5 * stage_fraction)

    def _left(self, now: float, within: float, stage_left: float | None = None) -> float | None:
        """Seconds left in the whole job (None while nothing has been measured)."""
        if not self.items:
            return None
        if self.item >= self.items:
            return 0.0
        after = self.items - self.item - 1
        if self._durations:
            per_item = statistics.fmean(self._durations[-20:])
            return max(0.0, per_item * (1.0 - within)) + per_item * after
        if self._any_inner:  # first item: what it took so far plus its stage's rest (later stages unknown yet)
            if stage_left is not None and self._item_start is not None:
                self._first_guess = (now, stage_left + ((now - self._item_start) + stage_left) * after)
            if self._first_guess is None:
                return None
            then, left = self._first_guess
            return max(0.0, left - (now - then))
        if self._first_item is not None:  # items with no steps of their own (a cluster batch): overall rate
            start, fraction0 = self._first_item
            fraction = self.item / self.items
            if fraction > fraction0 and now > start:
                return (now - start) / (fraction - fraction0) * (1.0 - fraction)
        return None

    def _stage_clock(self, event: Progress, now: float) -> float | None:
        """Seconds left in ``event``'s stage from its own rate so far."""
        return stage_time_left(self._clocks, event, now)


def stage_time_left(clocks: dict[str, tuple[float, int, int]], event: Progress, now: float) -> float | None:
    """Seconds left in ``event``'s stage from its rate so far (None while unknown), updating ``clocks``.

    ``clocks`` maps a stage to (start time, done at start, last done); a stage whose count goes back
    (a new item) restarts its clock.
    """
    start, done0, last = clocks.get(event.stage, (now, event.done, event.done))
    if event.done < last:
        start, done0 = now, event.done
    clocks[event.stage] = (start, done0, event.done)
    if not event.total or event.done <= done0 or event.done >= event.total:
        return None
    return (now - start) / (event.done - done0) * (event.total - event.done)


def describe_error(error: BaseException) -> str:
    """One line for the user about an unexpected error: what it means for them where we know, else its type and text."""
    import errno

    text = str(error)
    name = type(error).__name__
    if isinstance(error, MemoryError) or name == "OutOfMemoryError" or "out of memory" in text.lower():
        where = "the graphics card" if "cuda" in (text + name).lower() or name == "OutOfMemoryError" else "the computer"
        return (f"{where.capitalize()} ran out of memory. Close other programs, analyse fewer images at once, "
                "or choose the CPU in Settings.")
    if isinstance(error, OSError):
        target = f" ({error.filename})" if getattr(error, "filename", None) else ""
        if error.errno == errno.ENOSPC:
            return f"The disk is full{target}: free some space and start the job again; finished images are kept."
        if isinstance(error, PermissionError):
            return f"No permission to read or write a file{target}: check the folder's permissions."
        if isinstance(error, FileNotFoundError):
            return f"A file is missing{target}: was it moved, renamed or on a drive that is not connected?"
    return f"{name}: {text}"


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
    A stage whose count goes back (a new epoch) starts its clock again.  In a job over several
    items (sections) each line starts with ``section 3/20`` and the time left is for the whole job.
    """

    def __init__(self, stream: Any = None, interval: float = 1.0) -> None:
        import sys

        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._stage = None
        self._starts: dict[str, tuple[float, int, int]] = {}  # stage -> (start time, done at start, last done)
        self._last = 0.0
        self.overall = OverallProgress()

    def time_left(self, event: Progress, now: float) -> float | None:
        """Seconds left in ``event``'s stage from its rate so far, or None when not yet known."""
        return stage_time_left(self._starts, event, now)

    def __call__(self, event: Progress) -> None:
        now = time.monotonic()
        left = self.time_left(event, now)
        overall = self.overall.update(event, now)
        if event.stage != self._stage:
            self._stage, self._last = event.stage, 0.0
        final = bool(event.total) and event.done >= event.total
        if not final and now - self._last < self.interval:
            return
        self._last = now
        text = ""
        if overall.items:
            left = overall.seconds_left  # for the whole job
            if not event.item and overall.item < overall.items:
                text = f"{overall.noun or 'item'} {overall.item + 1}/{overall.items} "
        text += f"[{event.stage}]"
        if event.total:
            text += f" {event.done}/{event.total}"
            if left is not None:
                text += f" ~{left:.0f}s left" if not overall.items else f" ~{format_duration(left)} left in all"
        if event.message:
            text += f" {event.message}"
        print(text, file=self.stream, flush=True)
