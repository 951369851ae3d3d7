"""Benchmark of the desktop viewer: first picture of a huge section, frame time with 50 000 overlays, GUI stalls.

    .venv/bin/python bench/gui.py [--size 20000] [--channels 2] [--cells 50000] [--keep DIR]

1. Writes a ``size x size`` multi-channel uint16 OME-TIFF (tiled, zlib, streamed: never whole in
   memory) and builds its cached overview levels (app/core/pyramid.py), timing both.
2. Time to first picture: ``TileViewer.open_image`` until the overview is on screen (target < 1 s
   once the pyramid exists), and until a full-resolution detail of a 1:1 view is on screen.
3. Frame time of pan and zoom with ``--cells`` cell boxes (9 types) and about 800 tubule polygons
   drawn, at three zoom levels (target < 33 ms a frame): median and worst of synchronous repaints.
4. The longest stall of the GUI thread while jobs run in the queue (target < 100 ms): a 2 ms timer
   records the gaps between its ticks while the view pans every 30 ms (and, on Linux, how much of a
   gap the thread spent waiting for a CPU: on a busy machine that, not the app, makes most stalls),
   (a) idle, (b) during a torch + numpy + Python "analysis" job, (c) during a pyramid build in a
   worker thread (how the app built it before), (d) the same with the start-up heap frozen
   (``gc.freeze``: a full garbage collection of the ~250 000 start-up objects holds the GIL for
   100-250 ms) and (e) in a child process with the heap frozen (how the app builds it now).

Runs offscreen (QT_QPA_PLATFORM=offscreen) unless a display is set.  Prints each figure with its
target and the ratio target / measured (> 1 is better than the target).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402


def section_region(size: int, channels: int):
    """A region callable drawing a grid of bright "tubules" with noise, for write_tiff."""
    spacing, radius = 700, 300
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 300, (1024, 1024), dtype=np.uint16)

    def region(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy = (yy % spacing) - spacing / 2
        dx = (xx % spacing) - spacing / 2
        d2 = dy * dy + dx * dx
        ring = (d2 < radius * radius) & (d2 > (radius * 0.45) ** 2)
        base = noise[: y1 - y0, : x1 - x0] + 500
        out = np.empty((channels, y1 - y0, x1 - x0), np.uint16)
        out[0] = base + ring * 2500
        for c in range(1, channels):
            out[c] = base // 2 + ((d2 < (radius * 0.7) ** 2) & ring) * (800 + 300 * c)
        return out

    return region


def fake_objects(size: int, n_cells: int) -> dict:
    """Tubule polygons on the section's grid and ``n_cells`` cell boxes inside them."""
    from app.gui.overlays import CELL_TYPES, STAGES

    spacing, radius = 700, 300
    tubules = []
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    for i, cy in enumerate(range(spacing // 2, size, spacing)):
        for j, cx in enumerate(range(spacing // 2, size, spacing)):
            polygon = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
            tubules.append({"id": len(tubules) + 1, "class": STAGES[(i + j) % 5], "box": [cx - radius, cy - radius,
                            cx + radius, cy + radius], "polygon": polygon.tolist(), "centroid": [cy, cx]})
    rng = np.random.default_rng(1)
    centres = np.array([t["centroid"] for t in tubules])
    pick = rng.integers(0, len(tubules), n_cells)
    a, r = rng.uniform(0, 2 * np.pi, n_cells), rng.uniform(0.45, 1.0, n_cells) * radius
    ys, xs = centres[pick, 0] + r * np.sin(a), centres[pick, 1] + r * np.cos(a)
    sizes = rng.uniform(8, 20, n_cells)
    cells = [{"id": k + 1, "class": CELL_TYPES[k % 9], "box": [float(x - s / 2), float(y - s / 2), float(x + s / 2),
              float(y + s / 2)], "tubule_id": int(pick[k]) + 1} for k, (x, y, s) in enumerate(zip(xs, ys, sizes))]
    return {"image": "bench", "layers": {"tubules": tubules, "cells": cells}}


def analysis_job(seconds: float):
    """A stand-in for a pipeline: torch convolutions on tiles, numpy post-processing, Python loops."""
    import torch

    from app.core.jobs import Progress

    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 1, 3, padding=1))
    end = time.monotonic() + seconds
    step = 0
    while time.monotonic() < end:
        with torch.no_grad():
            out = net(torch.rand(1, 1, 512, 512)).numpy()[0, 0]
        mask = out > out.mean()
        objects = [{"id": i, "area": int(v)} for i, v in enumerate(mask.sum(axis=0))]  # Python work per object
        step += 1
        yield Progress("tiles", step, 0, f"tile {step}, {len(objects)} rows")
    return step


class CpuWait:
    """Seconds this thread has waited for a CPU while runnable (Linux schedstat), to tell a stall
    caused by a busy machine from one caused by this process (GIL, I/O); 0 where unavailable."""

    def __init__(self) -> None:
        try:
            self.file = open(f"/proc/self/task/{threading.get_native_id()}/schedstat", "rb")  # noqa: SIM115
        except OSError:
            self.file = None

    def __call__(self) -> float:
        if self.file is None:
            return 0.0
        self.file.seek(0)
        return int(self.file.read().split()[1]) / 1e9

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def measure_stall(app, viewer, queue, factory, seconds: float) -> tuple[float, int, float]:
    """While panning with ``factory``'s job running: the longest gap (ms) between 2 ms timer ticks, the
    number of gaps over 100 ms, and the longest gap less the time the GUI thread waited for a CPU."""
    from PySide6.QtCore import QTimer

    cpu_wait = CpuWait()
    gaps, last = [], [time.perf_counter(), cpu_wait()]

    def tick() -> None:
        now, waited = time.perf_counter(), cpu_wait()
        gaps.append((now - last[0], waited - last[1]))
        last[:] = [now, waited]

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(2)
    pan = QTimer()
    direction = [1]

    def move() -> None:
        rect = viewer.view.viewRect()
        direction[0] = -direction[0] if np.random.rand() < 0.05 else direction[0]
        viewer.view.translateBy(x=direction[0] * rect.width() * 0.03)

    pan.timeout.connect(move)
    pan.start(30)
    record = queue.submit("bench job", factory) if factory is not None else None
    end = time.monotonic() + seconds
    last[:] = [time.perf_counter(), cpu_wait()]
    while time.monotonic() < end or (record is not None and record.active):
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    pan.stop()
    cpu_wait.close()
    measured = gaps[1:] or [(0.0, 0.0)]
    longest = max(g for g, _ in measured)
    own = max(g - w for g, w in measured)
    return 1000 * longest, sum(g > 0.1 for g, _ in measured), 1000 * own


def frame_times(app, viewer, rect, frames: int = 20) -> list[float]:
    """Synchronous repaint times (ms) of small pans and zooms around ``rect``."""
    from PySide6.QtCore import QRectF

    viewer.view.setRange(QRectF(*rect), padding=0)
    app.processEvents()
    viewer.graphics.viewport().repaint()
    times = []
    for i in range(frames):
        if i % 4 == 3:
            viewer.view.scaleBy((1.1, 1.1) if i % 8 == 3 else (1 / 1.1, 1 / 1.1))
        else:
            viewer.view.translateBy(x=rect[2] * 0.02 * (1 if i % 8 < 4 else -1))
        app.processEvents()
        start = time.perf_counter()
        viewer.graphics.viewport().repaint()
        times.append(1000 * (time.perf_counter() - start))
    return times


def shown_viewer():
    """(QApplication, TileViewer) with the viewer shown at 1400 x 900 px, as the benches measure it."""
    from PySide6.QtWidgets import QApplication

    from app.gui.main import configure_pyqtgraph
    from app.gui.tile_viewer import TileViewer

    configure_pyqtgraph()
    app = QApplication.instance() or QApplication([])
    viewer = TileViewer()
    viewer.resize(1400, 900)
    viewer.show()
    app.processEvents()
    return app, viewer


def wait_until(app, predicate, timeout: float = 60.0) -> None:
    """Run the event loop until ``predicate()`` holds; TimeoutError after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("the viewer did not finish in time")
        app.processEvents()
        time.sleep(0.001)


def open_times(app, viewer, path: Path, cache: Path | None, attempts: int = 3, timeout: float = 60.0) -> list[float]:
    """Seconds from ``open_image`` to the whole section on screen, for each of ``attempts`` opens."""
    firsts = []
    for _ in range(attempts):
        opened: list = []
        viewer.image_opened.connect(opened.append)
        start = time.perf_counter()
        viewer.open_image("section", path, cache)
        wait_until(app, lambda: bool(opened), timeout)
        firsts.append(time.perf_counter() - start)
        viewer.image_opened.disconnect(opened.append)
        wait_until(app, viewer.is_idle, timeout)
    return firsts


def zoom_to_detail(app, viewer, size: int, timeout: float = 60.0) -> float:
    """Seconds from a 1:1 view of the section's middle to its full-resolution detail on screen."""
    from PySide6.QtCore import QRectF

    start = time.perf_counter()
    viewer.view.setRange(QRectF(size / 2, size / 2, 1400, 900), padding=0)
    wait_until(app, lambda: viewer.is_idle() and viewer.detail_level() == 0, timeout)
    return time.perf_counter() - start


def report(name: str, value: float, target: float, unit: str) -> None:
    ratio = target / value if value > 0 else float("inf")
    verdict = "meets" if value < target else "MISSES"
    print(f"  {name:52s} {value:9.1f} {unit}   target < {target:g} {unit}   ratio {ratio:5.2f}  ({verdict})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--cells", type=int, default=50000)
    parser.add_argument("--keep", type=Path, default=None, help="keep the section and its cache in this folder")
    parser.add_argument("--job-seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=1, help="pyramid-build stall measurements of each kind")
    parser.add_argument("--stall-only", action="store_true", help="only the GUI-thread stalls (part 4)")
    args = parser.parse_args()

    from app.core.images import write_tiff
    from app.core.jobs import run
    from app.core.pyramid import build_pyramid

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="stagescope-bench-gui-"))
    folder.mkdir(parents=True, exist_ok=True)
    section = folder / "section.ome.tif"
    cache = folder / "cache"
    size, channels = args.size, args.channels
    print(f"section {size} x {size} x {channels} channels uint16 in {folder}")
    if not section.exists():
        start = time.perf_counter()
        write_tiff(section, section_region(size, channels), "CYX", channel_names=["DAPI"] + [f"AB{c}" for c in
                   range(1, channels)], pixel_size_um=0.325, shape=(channels, size, size), dtype=np.uint16)
        print(f"  wrote the section (tiled zlib OME-TIFF, {section.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - start:.1f} s")
    if not (cache / "pyramid.json").exists():
        start = time.perf_counter()
        run(build_pyramid(section, cache))
        print(f"  built the cached overview levels once in {time.perf_counter() - start:.1f} s "
              f"({sum(p.stat().st_size for p in cache.iterdir()) / 2**20:.0f} MiB)")

    from app.gui.job_queue import JobQueue
    from app.gui.workers import freeze_gc_heap

    app, viewer = shown_viewer()

    def wait(predicate, timeout=60.0):
        wait_until(app, predicate, timeout)

    if args.stall_only:  # open the section and go to 1:1, as the full run leaves the view
        viewer.open_image("section", section, cache)
        wait(lambda: viewer.pyramid is not None and viewer.is_idle())
        zoom_to_detail(app, viewer, size)
    else:
        print("time to first picture (pyramid cached):")
        firsts = open_times(app, viewer, section, cache)
        report("open -> whole section on screen (best of 3)", 1000 * min(firsts), 1000, "ms")
        print(f"  (attempts: {', '.join(f'{1000 * t:.0f}' for t in firsts)} ms; overview level "
              f"{viewer._overview.level}, factor {viewer.pyramid.levels[viewer._overview.level].factor:g})")
        report("zoom to 1:1 -> full-resolution detail on screen", 1000 * zoom_to_detail(app, viewer, size), 1000, "ms")

        print(f"pan and zoom frame time with {args.cells} cells + tubules:")
        from app.gui.overlays import prepare_document

        doc = fake_objects(size, args.cells)
        start = time.perf_counter()
        prepared = prepare_document(doc)
        middle = time.perf_counter()
        viewer.overlays.set_document(doc, prepared)
        app.processEvents()
        viewer.graphics.viewport().repaint()
        print(f"  overlays prepared in {1000 * (middle - start):.0f} ms (reader thread in the app), items made and "
              f"first drawn in {1000 * (time.perf_counter() - middle):.0f} ms on the GUI thread "
              f"({viewer.overlays.object_count()} objects, {viewer.overlays.item_count()} items shown now)")
        worst = 0.0
        views = (("whole section", (0, 0, size, size)), ("a quarter", (size / 4, size / 4, size / 2, size / 2)),
                 ("1:1 (1400 x 900 px)", (size / 2, size / 2, 1400, 900)))
        for label, rect in views:
            times = frame_times(app, viewer, rect)
            worst = max(worst, max(times))
            report(f"{label}: median frame", statistics.median(times), 33, "ms")
            print(f"    worst frame {max(times):.1f} ms")
        wait(viewer.is_idle)

    print("longest GUI-thread stall while panning:")
    queue = JobQueue()
    start = time.perf_counter()
    import torch  # noqa: F401  (the app imports it once at start-up, on the device-detection thread)

    freeze_gc_heap()  # as the app does once the window is up and again after device detection
    print(f"  (torch imported in {time.perf_counter() - start:.1f} s before measuring; the app does this in the "
          "background at start-up)")
    idle, _, own = measure_stall(app, viewer, queue, None, 2.0)
    report("no job", idle, 100, "ms")
    print(f"    ({own:.0f} ms of it not waiting for a CPU)")
    stall, _, own = measure_stall(app, viewer, queue, lambda: analysis_job(args.job_seconds), 0.5)
    report("torch + numpy + Python analysis job", stall, 100, "ms")
    print(f"    ({own:.0f} ms of it not waiting for a CPU)")

    kinds = (("pyramid build in a worker thread (before)", build_pyramid, False),
             ("pyramid build in a worker thread + gc.freeze (app)", build_pyramid, True))
    for _round in range(args.rounds):  # alternating, so that a busy machine hurts each alike
        for label, build, frozen in kinds:
            if frozen:
                freeze_gc_heap()
            else:
                gc.unfreeze()
            shutil.rmtree(folder / "cache2", ignore_errors=True)
            start = time.perf_counter()
            stall2, over, own = measure_stall(app, viewer, queue,
                                              lambda build=build: build(section, folder / "cache2"), 0.5)
            report(label, stall2, 100, "ms")
            print(f"    (longest not waiting for a CPU {own:.0f} ms; {over} stalls over 100 ms; build "
                  f"{time.perf_counter() - start:.1f} s; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    viewer.shutdown()
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
