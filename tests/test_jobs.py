"""Job progress as the CLI prints it: time left per stage."""

from __future__ import annotations

import io

from app.core.jobs import ConsoleProgress, Progress


def test_time_left_survives_interleaved_stages():
    """Training alternates 'train' and 'validate'; the train estimate must not restart at each switch."""
    console = ConsoleProgress(io.StringIO(), interval=0)
    assert console.time_left(Progress("train", 0, 100), now=0.0) is None  # no rate yet
    assert console.time_left(Progress("train", 10, 100), now=10.0) == 90.0  # 1 s per step
    console.time_left(Progress("validate", 0, 5), now=10.0)
    console.time_left(Progress("validate", 5, 5), now=12.0)
    # back to train at 20 of 100 after 20 s in all: 1 s per step -> 80 s, not "unknown"
    assert console.time_left(Progress("train", 20, 100), now=20.0) == 80.0


def test_time_left_restarts_when_the_count_goes_back():
    console = ConsoleProgress(io.StringIO(), interval=0)
    console.time_left(Progress("epoch", 0, 10), now=0.0)
    assert console.time_left(Progress("epoch", 5, 10), now=50.0) == 50.0
    assert console.time_left(Progress("epoch", 0, 10), now=60.0) is None  # a new pass over the data
    assert console.time_left(Progress("epoch", 2, 10), now=62.0) == 8.0


def test_console_prints_stage_counts_and_time_left():
    stream = io.StringIO()
    console = ConsoleProgress(stream, interval=0)
    for done in range(0, 5):
        console(Progress("tiles", done, 4, "section A"))
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[tiles] 0/4 section A"
    assert lines[-1] == "[tiles] 4/4 section A"
    assert "s left" in lines[1]
