"""Progress over a whole job: item i of n, stages within an item, total time left, notices, lab words."""

from __future__ import annotations

import io

import pytest

from app.core.jobs import ConsoleProgress, OverallProgress, Progress, stage_words


def _section(tracker: OverallProgress, i: int, n: int, t: float, seconds: tuple[float, float] = (10.0, 30.0)) -> float:
    """Feed one section: 10 s of tubules then 30 s of cells (4 steps each); returns the end time."""
    tracker.update(Progress("sections", i, n, f"s{i}", item="section"), now=t)
    for stage, span in zip(("tubules", "cells"), seconds):
        for k in range(5):
            tracker.update(Progress(stage, k, 4), now=t + span * k / 4)
        t += span
    return t


def test_bar_runs_over_all_sections_not_per_stage():
    tracker = OverallProgress()
    t = _section(tracker, 0, 4, 0.0)
    seen = []
    tracker.update(Progress("sections", 1, 4, "s1", item="section"), now=t)
    for stage, span in (("tubules", 10.0), ("cells", 30.0)):
        for k in range(5):
            seen.append(tracker.update(Progress(stage, k, 4), now=t + span * k / 4))
        t += span
    fractions = [o.fraction for o in seen]
    assert fractions == sorted(fractions)  # never goes back when cells start from 0
    assert fractions[0] == pytest.approx(0.25) and fractions[-1] == pytest.approx(0.5)
    # tubules took a quarter of the first section, so the end of tubules is a quarter into this one
    assert seen[4].fraction == pytest.approx((1 + 0.25) / 4)
    assert seen[4].item == 1 and seen[4].items == 4 and seen[4].noun == "section"


def test_total_time_left_counts_the_sections_still_to_come():
    tracker = OverallProgress()
    t = _section(tracker, 0, 20, 0.0)  # 40 s per section
    tracker.update(Progress("sections", 1, 20, "s1", item="section"), now=t)
    halfway = tracker.update(Progress("cells", 2, 4), now=t + 10 + 15)
    # 1 - (0.25 + 0.75 * 0.5) = 0.375 of this section, then 18 more sections of 40 s
    assert halfway.seconds_left == pytest.approx(40 * 0.375 + 18 * 40)
    assert halfway.text() == "Section 2 of 20 · finding cells 50% · about 12 min left"


def test_skipped_sections_do_not_make_the_estimate_optimistic():
    tracker = OverallProgress()
    for i in range(5):  # already done: no steps of their own
        tracker.update(Progress("sections", i, 10, f"s{i}", item="section"), now=0.01 * i)
    t = _section(tracker, 5, 10, 1.0)
    tracker.update(Progress("sections", 6, 10, "s6", item="section"), now=t)
    assert tracker.last.seconds_left == pytest.approx(4 * 40)


def test_first_section_fills_the_bar_without_going_back():
    tracker = OverallProgress()
    tracker.update(Progress("sections", 0, 1, "s0", item="section"), now=0)
    fractions = [tracker.update(Progress(stage, k, 4), now=1).fraction
                 for stage in ("overview", "tubules", "cells") for k in range(5)]
    assert fractions == sorted(fractions) and 0 < fractions[-1] < 1


def test_time_left_in_the_first_section_is_not_fooled_by_a_quick_first_stage():
    tracker = OverallProgress()
    tracker.update(Progress("sections", 0, 10, "s0", item="section"), now=0.0)
    tracker.update(Progress("overview", 0, 1), now=0.0)
    tracker.update(Progress("overview", 1, 1), now=1.0)  # half the bar of this section, in 1 s
    tracker.update(Progress("tubules", 0, 10), now=1.0)
    state = tracker.update(Progress("tubules", 1, 10), now=61.0)  # 60 s per tile
    # at least this section's 601 s (1 + 10 x 60) for each of the 10 sections, less the 61 s done
    assert state.seconds_left == pytest.approx(540 + 601 * 9)
    later = tracker.update(Progress("tubules", 10, 10), now=601.0)  # stage over: the estimate counts down
    assert later.seconds_left == pytest.approx(540 + 601 * 9 - 540)


def test_a_job_without_items_keeps_the_time_left_of_its_stage():
    tracker = OverallProgress()
    tracker.update(Progress("train", 0, 100), now=0.0)
    state = tracker.update(Progress("train", 10, 100), now=10.0)
    assert state.seconds_left == pytest.approx(90.0) and state.fraction == pytest.approx(0.1)
    assert state.text() == "training 10% · about 2 min left"


def test_all_done_says_so():
    tracker = OverallProgress()
    _section(tracker, 0, 2, 0.0)
    state = tracker.update(Progress("sections", 2, 2, item="section"), now=100.0)
    assert state.fraction == 1.0 and state.seconds_left == 0.0
    assert state.text().startswith("2 of 2 sections done")


def test_stage_names_are_in_lab_words():
    assert stage_words("tubules") == "finding tubules" and stage_words("something new") == "something new"


def test_console_prefixes_the_section_and_gives_time_left_in_all():
    stream = io.StringIO()
    console = ConsoleProgress(stream, interval=0)
    console(Progress("sections", 0, 3, "a", item="section"))
    console(Progress("cells", 1, 4))
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("section 1/3 [cells] 1/4")


# ---------------------------------------------------------------------------------- the Jobs dock


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _running_record(title: str = "Stagetool on 20 images"):
    from app.gui.job_queue import JobRecord

    clock = _Clock()
    record = JobRecord(title=title, factory=lambda: None, tracker=OverallProgress(clock=clock))
    record.status = "running"
    return record, clock


def test_jobs_dock_shows_section_of_total_and_an_overall_bar(qtbot):
    from app.gui.job_queue import JobQueue
    from app.gui.job_queue_widget import JobQueueWidget

    queue = JobQueue()
    widget = JobQueueWidget(queue)
    qtbot.addWidget(widget)
    record, clock = _running_record()
    queue.records.append(record)
    queue._running["main"] = record
    for i in range(2):
        clock.now = 40.0 * i
        record.take(Progress("sections", i, 20, f"testis_{i:03d}", item="section"))
        for stage, span in (("tubules", 10.0), ("cells", 30.0)):
            for k in range(5):
                clock.now = 40.0 * i + (0 if stage == "tubules" else 10.0) + span * k / 4
                record.take(Progress(stage, k, 4))
                widget.update_record(record)
            if (i, stage) == (1, "tubules"):
                after_tubules = widget._bars[record.id].value()
    clock.now = 80.0
    record.take(Progress("sections", 2, 20, "testis_002", item="section"))
    clock.now = 90.0
    record.take(Progress("cells", 2, 4))
    widget.update_record(record)
    row = widget.tree.topLevelItem(0)
    assert row.text(1) == "Section 3 of 20 · finding cells 50%"
    assert after_tubules == int(100 * 1.25 / 20)  # cells starting from 0 do not empty the bar
    assert widget._bars[record.id].value() == int(100 * 2.625 / 20)
    assert "about 12 min left" in widget.summary.text() and "Section 3 of 20" in widget.summary.text()
    assert row.text(3)  # the whole job's time left, not the stage's


def test_long_titles_fit_the_job_column_and_keep_their_tooltip(qtbot):
    from app.gui.job_queue import JobQueue
    from app.gui.job_queue_widget import JobQueueWidget

    queue = JobQueue()
    widget = JobQueueWidget(queue)
    qtbot.addWidget(widget)
    widget.resize(1100, 300)
    title = "Overview levels of testis_phantom_large_section_2026"
    record, _ = _running_record(title)
    queue.records.append(record)
    widget.update_record(record)
    row = widget.tree.topLevelItem(0)
    assert row.toolTip(0) == title
    assert widget.tree.columnWidth(0) >= widget.tree.fontMetrics().horizontalAdvance(title)


def _slow_job(seconds: float):
    import time

    yield Progress("sections", 0, 1, "a", item="section")
    time.sleep(seconds)
    yield Progress("sections", 1, 1, item="section")
    return "ok"


def test_a_long_job_ending_gives_a_notice_and_alerts_the_window(qtbot, monkeypatch):
    from PySide6.QtWidgets import QApplication, QMainWindow

    from app.gui.job_notice import JobNotice
    from app.gui.job_queue import JobQueue

    alerts = []
    monkeypatch.setattr(QApplication, "alert", staticmethod(lambda widget, ms=0: alerts.append(widget)))
    window = QMainWindow()
    qtbot.addWidget(window)
    queue = JobQueue()
    notice = JobNotice(queue, window, long_job_s=0.05)
    if notice.tray is not None:  # a desktop with a tray: keep the test off the real tray
        notice.tray = None
    queue.submit("Stagetool on 1 image", lambda: _slow_job(0.1))
    queue.submit("quick", lambda: _slow_job(0.0))
    assert queue.wait(10)
    assert [title for title, _ in notice.shown] == ["Job finished"]
    assert "Stagetool on 1 image: finished 1 section in" in notice.shown[0][1]
    assert window.statusBar().currentMessage() == notice.shown[0][1]
    assert alerts == [window]


def test_notice_goes_to_the_tray_when_there_is_one(qtbot):
    from PySide6.QtWidgets import QMainWindow

    from app.gui.job_notice import JobNotice
    from app.gui.job_queue import JobQueue

    class Tray:
        def __init__(self) -> None:
            self.messages = []

        def show(self) -> None:
            pass

        def showMessage(self, title, text, icon, ms) -> None:  # noqa: N802 - Qt's name
            self.messages.append((title, text))

    window = QMainWindow()
    qtbot.addWidget(window)
    queue = JobQueue()
    tray = Tray()
    JobNotice(queue, window, tray=tray, long_job_s=0.0)
    record, _ = _running_record()
    record.status, record.started_at, record.ended_at, record.message = "failed", 0.0, 3700.0, "disk full"
    queue.failed.emit(record)
    assert tray.messages == [("Job failed", "Stagetool on 20 images stopped after 1 h 01 min: disk full")]


def test_unexpected_errors_are_told_in_the_lab_s_words():
    import errno

    from app.core.jobs import describe_error

    assert describe_error(OSError(errno.ENOSPC, "No space left on device", "/data/run")).startswith(
        "The disk is full (/data/run)")
    assert "ran out of memory" in describe_error(MemoryError())
    assert describe_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")).startswith(
        "The graphics card ran out of memory")
    assert describe_error(FileNotFoundError(2, "No such file", "a.tif")).startswith("A file is missing (a.tif)")
    assert describe_error(RuntimeError("boom")) == "RuntimeError: boom"  # unknown: kept as it is, details have more


def test_a_job_that_runs_out_of_disk_space_says_so(qtbot):
    import errno

    from app.gui.job_queue import JobQueue

    def full():
        yield Progress("write", 0, 1)
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/predictions.json")

    queue = JobQueue()
    with qtbot.waitSignal(queue.failed, timeout=10000):
        record = queue.submit("Stagetool on 1 image", full)
    assert record.message.startswith("The disk is full (/data/run/predictions.json)")
    assert "Traceback" in record.details


@pytest.mark.slow
def test_torch_libraries_load_before_the_import_without_breaking_it():
    """The preload maps libtorch_cpu (the GIL-free part of importing torch); torch works afterwards."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not sys.platform.startswith("linux"):
        pytest.skip("preloading is done on Linux only")
    code = ("import json; from app.core.torch_preload import preload_torch_libraries as p; names = p(); "
            "mapped = 'libtorch_cpu.so' in open('/proc/self/maps').read(); import torch; "
            "print(json.dumps([names, mapped, float(torch.ones(3).sum())]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
    names, mapped, total = json.loads(out.stdout.splitlines()[-1])
    assert "libtorch_cpu.so" in names and mapped and total == 3.0
