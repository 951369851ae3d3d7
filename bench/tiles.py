"""Benchmark: stream a big section tile by tile versus reading it whole; prints time and peak memory.

    .venv/bin/python bench/tiles.py [--size 20000] [--tile 1024] [--overlap 128] [--file-tile 512]

Writes a ``size x size`` uint16 OME-TIFF (tiled, zlib, streamed from a tile iterator so the
generator itself never holds the image) into a temporary folder, then runs in separate fresh
subprocesses, so that each peak RSS (``ru_maxrss``) belongs to one way of reading only:

(a) ``tiles``: every window of a ``TileGrid(tile, overlap)`` read with ``TileGrid.read`` (lazy
    region reads with reflect padding at the border), summing each tile's core;
(b) ``whole``: ``Image.read()`` of the full image, summed;
(c) ``baseline``: the imports only, to show what every process pays anyway.

Both sums must agree (the cores partition the image).  The temporary folder is deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def synthetic_tiles(size: int, tile: int, seed: int = 0):
    """Tiles of a smooth gradient plus noise, row by row: compresses roughly like real data."""
    noise = np.random.default_rng(seed).integers(0, 400, (tile, tile), dtype=np.uint16)
    ramp = np.arange(tile, dtype=np.uint16)
    for y0 in range(0, size, tile):
        for x0 in range(0, size, tile):
            base = (y0 // tile * 977 + x0 // tile * 613) % 20000
            block = noise + ramp[:, None] * 8 + ramp[None, :] * 4 + np.uint16(base)
            yield block[: min(tile, size - y0), : min(tile, size - x0)]


def child(mode: str, path: str, tile: int, overlap: int) -> None:
    """Run one measurement in this (fresh) process and print it as JSON."""
    import tifffile  # noqa: F401  (imported here so that the baseline pays for them too)
    import zarr  # noqa: F401

    from app.core.images import open_image
    from app.core.tiles import TileGrid

    start = time.perf_counter()
    total = 0
    count = 0
    if mode == "tiles":
        with open_image(path) as image:
            grid = TileGrid.from_image(image, tile_size=tile, overlap=overlap)
            for window_tile, window in grid.iter_read(image):
                total += int(window_tile.crop_core(window).sum(dtype=np.uint64))
                count += 1
    elif mode == "whole":
        with open_image(path) as image:
            data = image.read()
            total = int(data.sum(dtype=np.uint64))
            count = 1
            del data
    seconds = time.perf_counter() - start
    print(json.dumps({"mode": mode, "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
                      "checksum": total, "reads": count}))


def measure(mode: str, path: Path, tile: int, overlap: int) -> dict:
    """Run :func:`child` in a fresh interpreter and return what it printed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(path),
               "--tile", str(tile), "--overlap", str(overlap)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="image side in pixels (default 20000)")
    parser.add_argument("--tile", type=int, default=1024, help="TileGrid window side (default 1024)")
    parser.add_argument("--overlap", type=int, default=128, help="TileGrid overlap (default 128)")
    parser.add_argument("--file-tile", type=int, default=512, help="TIFF tile side on disk (default 512)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.tile, args.overlap)
        return 0

    from app.core.images import write_tiff
    from app.core.tiles import TileGrid

    size, ftile = args.size, args.file_tile
    with tempfile.TemporaryDirectory(prefix="stagescope-bench-") as folder:
        path = Path(folder) / "section.ome.tif"
        start = time.perf_counter()
        write_tiff(path, synthetic_tiles(size, ftile), "YX", shape=(size, size), dtype=np.uint16,
                   tile=(ftile, ftile), pixel_size_um=0.325)
        written = time.perf_counter() - start
        grid = TileGrid(size, size, args.tile, args.overlap)
        raw_mb = size * size * 2 / 1e6
        print(f"image     {size} x {size} uint16 = {raw_mb:.0f} MB raw; OME-TIFF {ftile} px tiles, zlib: "
              f"{path.stat().st_size / 1e6:.0f} MB on disk; written from a tile iterator in {written:.1f} s "
              f"(writer peak RSS {peak_rss_mb():.0f} MiB)")
        print(f"grid      {grid}")
        base = measure("baseline", path, args.tile, args.overlap)
        tiles = measure("tiles", path, args.tile, args.overlap)
        whole = measure("whole", path, args.tile, args.overlap)
    print(f"baseline  imports only                      peak RSS {base['peak_rss_mb']:7.0f} MiB")
    print(f"(a) tiles {tiles['reads']:4d} windows via TileGrid.read   {tiles['seconds']:7.2f} s   "
          f"peak RSS {tiles['peak_rss_mb']:7.0f} MiB")
    print(f"(b) whole Image.read() of everything       {whole['seconds']:7.2f} s   "
          f"peak RSS {whole['peak_rss_mb']:7.0f} MiB")
    above = (whole["peak_rss_mb"] - base["peak_rss_mb"]) / max(tiles["peak_rss_mb"] - base["peak_rss_mb"], 1e-9)
    print(f"ratios    time tiles/whole = {tiles['seconds'] / whole['seconds']:.2f}x; "
          f"peak memory whole/tiles = {whole['peak_rss_mb'] / tiles['peak_rss_mb']:.2f}x "
          f"({above:.1f}x above the import baseline)")
    same = tiles["checksum"] == whole["checksum"]
    print(f"checksum  sum of tile cores {'==' if same else '!='} sum of whole image ({whole['checksum']})")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
