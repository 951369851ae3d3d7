"""Benchmark of a big OME-Zarr section read through bioio-ome-zarr: writing, first picture, memory.

    .venv/bin/python bench/formats.py [--size 20000] [--channels 2] [--keep DIR] [--skip-viewer]

1. Writes a ``size x size`` two-channel uint16 OME-Zarr with bioio-ome-zarr's writer, one strip of
   rows at a time (``write_region``: each strip also fills every lower level), so the section is
   never whole in memory; levels halve down to about 1000 px.
2. Time to first picture: ``TileViewer.open_image`` until the whole section is on screen, using the
   file's own levels (no cache to build), best of 3 (target < 1 s); then a 1:1 detail.  Before
   it, the first open in a fresh process, which also pays the reading library's import.
3. Peak memory (ru_maxrss of this process, which only grows) after a full-resolution pass over the
   section in analysis-sized windows (2048 px, both channels), as Stagetool reads it, and after
   Stagetool's whole-section step (DAPI overview and tissue mask) (target < 4 GB).  Run it again
   with ``--keep DIR --skip-viewer`` on the written section for figures without the writer's memory.
   The models' passes over the tiles are not run here (hours on a CPU for 20000 px).

Prints each figure with its target.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def strip(y0: int, y1: int, size: int, channels: int) -> np.ndarray:
    """Rows y0:y1 of a synthetic section: rings on a noisy background, one pattern per channel."""
    yy, xx = np.mgrid[y0:y1, 0:size]
    dy, dx = (yy % 700) - 350, (xx % 700) - 350
    d2 = dy * dy + dx * dx
    ring = (d2 < 300 * 300) & (d2 > 135 * 135)
    base = ((yy * 7 + xx * 13) % 300 + 500).astype(np.uint16)
    out = np.empty((channels, y1 - y0, size), np.uint16)
    out[0] = base + ring * 2500
    for c in range(1, channels):
        out[c] = base // 2 + ((d2 < 210 * 210) & ring) * (800 + 300 * c)
    return out


def write_section(path: Path, size: int, channels: int, rows: int = 1024) -> float:
    """Write the OME-Zarr strip by strip; returns seconds."""
    from bioio_ome_zarr.writers import Channel, OMEZarrWriter

    shapes, side = [], size
    while True:
        shapes.append((channels, -(-size // 2 ** len(shapes)), -(-size // 2 ** len(shapes))))
        side = shapes[-1][-1]
        if side <= 1024:
            break
    writer = OMEZarrWriter(str(path), level_shapes=shapes, dtype=np.uint16, chunk_shape=(1, 512, 512),
                           axes_names=["c", "y", "x"], axes_types=["channel", "space", "space"],
                           axes_units=[None, "micrometer", "micrometer"], physical_pixel_size=[1.0, 0.325, 0.325],
                           channels=[Channel(label=n, color="FFFFFF") for n in ["DAPI", "SOX9", "SCP3"][:channels]])
    start = time.perf_counter()
    for y0 in range(0, size, rows):
        y1 = min(y0 + rows, size)
        writer.write_region(strip(y0, y1, size, channels), (slice(0, channels), slice(y0, y1), slice(0, size)))
    return time.perf_counter() - start


def first_picture(path: Path, size: int) -> None:
    """Open the section in the viewer three times; print the best time to the whole-section picture."""
    from bench.gui import open_times, shown_viewer, zoom_to_detail  # the viewer bench's own measurements

    app, viewer = shown_viewer()
    firsts = open_times(app, viewer, path, None, timeout=120.0)
    print(f"  open -> whole section on screen (file levels, best of 3): {1000 * min(firsts):.0f} ms "
          f"(target < 1000 ms; attempts {', '.join(f'{1000 * t:.0f}' for t in firsts)} ms)")
    seconds = zoom_to_detail(app, viewer, size, timeout=120.0)
    print(f"  zoom to 1:1 -> full-resolution detail on screen: {1000 * seconds:.0f} ms")


COLD_OPEN = """
import sys, time
start = time.perf_counter()
from app.core.images import open_image
with open_image(sys.argv[1]) as image:
    opened = time.perf_counter()
    image.read(level=len(image.info.levels) - 1)
print(f"{opened - start:.3f} {time.perf_counter() - start:.3f}")
"""


def cold_open(path: Path) -> None:
    """First open in a fresh process: the reading library's import is paid once per app start."""
    import subprocess

    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", COLD_OPEN, str(path)], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": root})
    opened, read = (float(x) for x in proc.stdout.split())
    print(f"  first open in a fresh process (library import included): {1000 * opened:.0f} ms, then its smallest "
          f"level read in {1000 * (read - opened):.0f} ms (paid once per app start, on top of the viewer's picture)")


def analysis_pass(path: Path, window: int = 2048) -> None:
    """Read the whole section at full resolution in analysis windows; print time and peak memory."""
    from app.core.images import open_image

    start = time.perf_counter()
    total = 0.0
    with open_image(path) as image:
        h, w = image.info.height, image.info.width
        for y0 in range(0, h, window):
            for x0 in range(0, w, window):
                block = image.read(region=(y0, x0, min(y0 + window, h), min(x0 + window, w)))
                total += float(block[0].mean())
    print(f"  full-resolution pass in {window} px windows: {time.perf_counter() - start:.1f} s, "
          f"peak memory of this process {peak_rss_mb():.0f} MiB (target < 4096 MiB)")
    import math

    from app.pipelines.stagetool.params import AnalyzeParams
    from app.pipelines.stagetool.predict import section_overview, tissue_mask

    start = time.perf_counter()
    with open_image(path) as image:
        scale = max(AnalyzeParams().map_scale, math.ceil(math.sqrt(h * w / 64e6)))
        overview = section_overview(image, 0, scale, str(path))
        tissue = tissue_mask(overview)
    print(f"  Stagetool's whole-section step (DAPI overview 1:{scale} {overview.shape}, tissue mask "
          f"{int(tissue.sum())} px): {time.perf_counter() - start:.1f} s, peak memory {peak_rss_mb():.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="write (or reuse) the section in this folder")
    parser.add_argument("--skip-viewer", action="store_true")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="stagescope-bench-formats-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "section.ome.zarr"
    print(f"section {args.size} x {args.size} x {args.channels} channels uint16 OME-Zarr in {folder}")
    if not (path / "zarr.json").exists():
        seconds = write_section(path, args.size, args.channels)
        print(f"  written strip by strip in {seconds:.1f} s, peak memory {peak_rss_mb():.0f} MiB")
    from app.core.images import open_image

    start = time.perf_counter()
    with open_image(path) as image:
        levels = image.info.levels
    print(f"  opened in {1000 * (time.perf_counter() - start):.0f} ms; levels {levels}")
    cold_open(path)
    if not args.skip_viewer:
        first_picture(path, args.size)
    analysis_pass(path)


if __name__ == "__main__":
    main()
