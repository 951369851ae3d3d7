"""Benchmark: time and peak memory of writing a synthetic DAPI testis section with ``write_testis``.

    nice -n 10 .venv/bin/python bench/phantoms.py [--sizes 4096 8192] [--markers SOX9] [--no-traced]

Each size runs in fresh subprocesses (so each peak belongs to one write only), writing into a
temporary folder that is deleted afterwards:

(a) ``rss``: plain run; wall time of the layout and of the whole ``write_testis`` call, and the
    peak resident memory above the imports' baseline (``ru_maxrss``).  RSS also counts the pages of
    the memory-mapped spool files ``write_tiff`` uses for the pyramid and the later channels, which
    live on disk and grow with the section;
(b) ``traced``: the same under ``tracemalloc``: the peak of what Python and numpy allocate (the
    heap), which is what must not grow with the section.  tracemalloc slows the layout (many small
    Python objects) severalfold, so its times are not reported.

Ratios are to the float32 size of one channel of the section (``size * size * 4`` bytes), the
memory a whole-image float render would need at least.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def child(mode: str, size: int, markers: tuple[str, ...]) -> None:
    """Write one section in this (fresh) process and print the measurement as JSON."""
    import tracemalloc

    from app.pipelines.stagetool import phantom as tp

    baseline = peak_rss_mb()
    timing = {}
    make_layout = tp.testis_layout

    def timed_layout(*args, **kwargs):
        start = time.perf_counter()
        layout = make_layout(*args, **kwargs)
        timing["layout_s"] = time.perf_counter() - start
        timing["cells"] = len(layout.cells)
        timing["tubules"] = len(layout.tubules)
        return layout

    tp.testis_layout = timed_layout  # write_testis looks the name up at call time
    if mode == "traced":
        tracemalloc.start()
    with tempfile.TemporaryDirectory(prefix="bench-phantoms-") as folder:
        start = time.perf_counter()
        tp.write_testis(folder, seed=0, count=1, size=size, markers=markers)
        total = time.perf_counter() - start
        disk = sum(p.stat().st_size for p in Path(folder).iterdir()) / (1 << 20)
    traced = tracemalloc.get_traced_memory()[1] / (1 << 20) if mode == "traced" else None
    print(json.dumps({**timing, "write_s": total, "rss_mb": peak_rss_mb() - baseline, "traced_mb": traced,
                      "disk_mb": disk}))


def measure(mode: str, size: int, markers: tuple[str, ...]) -> dict:
    """Run :func:`child` in a fresh interpreter and return its JSON."""
    command = [sys.executable, __file__, "--child", mode, "--sizes", str(size), "--markers", ",".join(markers)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--markers", default="SOX9", help="comma-separated antibody channels after DAPI")
    parser.add_argument("--no-traced", action="store_true", help="skip the (slow) tracemalloc run")
    parser.add_argument("--child", choices=("rss", "traced"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    markers = tuple(m for m in args.markers.split(",") if m)
    if args.child:
        child(args.child, args.sizes[0], markers)
        return
    print(f"write_testis: DAPI + {', '.join(markers) or 'no markers'}; "
          "ratio = peak / (size^2 x 4 B, the float32 size of one channel)")
    print(f"{'size':>6} {'tubules':>7} {'cells':>7} {'layout s':>8} {'write s':>8} {'disk MB':>8} "
          f"{'RSS MB':>7} {'RSS ratio':>9} {'heap MB':>8} {'heap ratio':>10}")
    for size in args.sizes:
        float32_mb = size * size * 4 / (1 << 20)
        plain = measure("rss", size, markers)
        traced = None if args.no_traced else measure("traced", size, markers)["traced_mb"]
        heap = f"{traced:8.1f} {traced / float32_mb:10.3f}" if traced is not None else f"{'-':>8} {'-':>10}"
        print(f"{size:>6} {plain['tubules']:>7} {plain['cells']:>7} {plain['layout_s']:>8.1f} {plain['write_s']:>8.1f} "
              f"{plain['disk_mb']:>8.1f} {plain['rss_mb']:>7.1f} {plain['rss_mb'] / float32_mb:>9.3f} {heap}",
              flush=True)


if __name__ == "__main__":
    main()
