"""A progress bar with time left for the CLI, fed by the batch job's :class:`~app.core.jobs.Progress` events.

The "images" stage draws ``[#####.....] 12/40 30% 1m05s left | img13: decompose 4/9`` on one
line of a terminal (overall progress, then the progress of an image being analysed, sent by its
worker), or one line per finished image when the output is a file; plus one line per finished
image saying where it ran and how long it took.  Time left is measured on the images this run processed, so images
skipped as already done do not make the estimate optimistic.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from app.core.jobs import Progress


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``2h10m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def time_left(elapsed: float, done: int, total: int) -> float | None:
    """Seconds left at the rate so far (None before the first image finished)."""
    if done <= 0 or total <= done:
        return None if done <= 0 else 0.0
    return elapsed / done * (total - done)


class ProgressBar:
    """Draws the batch's progress on ``stream`` (stderr by default)."""

    def __init__(self, stream: Any = None, width: int = 30, verbose: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.verbose = verbose
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start: float | None = None
        self._first_done = 0
        self._last_done = -1
        self._drawn = False

    def bar(self, done: int, total: int, now: float) -> str:
        """The bar line for ``done`` of ``total``."""
        filled = int(self.width * done / total) if total else 0
        text = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {100 * done // max(total, 1):3d}%"
        if self._start is not None:
            left = time_left(now - self._start, done - self._first_done, total - self._first_done)
            text += f"  {format_seconds(now - self._start)} elapsed"
            if left is not None:
                text += f", {format_seconds(left)} left"
        return text

    def _print(self, text: str) -> None:
        if self._drawn and self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self._drawn = False

    def __call__(self, event: Progress) -> None:
        if event.stage != "images" or not event.total:
            if event.message:
                self._print(f"[{event.stage}] {event.message}")
            self._start = None  # the cluster is up: time left counts from dispatch, not from its start-up
            return
        now = time.monotonic()
        if self._start is None:
            self._start, self._first_done = now, event.done
        record = event.data.get("record")
        if record is not None and self.verbose:
            self._print(describe(record))
        if self.tty:
            self.stream.write("\r\x1b[K" + self.bar(event.done, event.total, now) + running_text(event.data))
            self._drawn = True
            if event.done >= event.total:
                self.stream.write("\n")
                self._drawn = False
        elif event.done != self._last_done:
            self._print(self.bar(event.done, event.total, now))
        self._last_done = event.done
        self.stream.flush()


def running_text(data: dict[str, Any], width: int = 50) -> str:
    """`` | img3: decompose 4/9 (+1 more)`` for the images in progress (per-task progress), or ""."""
    running = data.get("running") or {}
    if not running:
        return ""
    image, state = next(iter(running.items()))
    more = f" (+{len(running) - 1} more)" if len(running) > 1 else ""
    return f" | {image}: {state}"[:width] + more


def describe(record: dict[str, Any]) -> str:
    """One line about a finished image."""
    text = f"  {record['image']}: {record['status']}"
    if record.get("status") in ("done", "duplicate"):
        text += f" on {record.get('worker')} ({record.get('device') or '?'}) in {record.get('seconds', 0):.1f} s"
    if record.get("error"):
        text += f": {record['error']}"
    return text
