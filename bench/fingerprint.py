"""Benchmark: what the batch resume fingerprint costs on a big section; prints times and ratios.

    .venv/bin/python bench/fingerprint.py [--size 20000] [--channels 2] [--repeat 3] [--keep DIR]

Writes a ``channels x size x size`` uint16 TIFF (tiled, uncompressed: 1.6 GB at the defaults,
streamed from a tile iterator so the image is never held in memory) into a temporary folder and
times, per file:

(a) ``old``: name + size from ``stat`` (what the fingerprint held before; blind to content);
(b) ``sampled``: :func:`app.core.fingerprint.file_fingerprint` (size, mtime_ns and sha256 of the
    first, last and 16 evenly spaced 1 MiB blocks), what batches use now;
(c) ``full``: sha256 of the whole file (:func:`app.core.fingerprint.full_digest`);
(d) ``blake2b``: BLAKE2b of the whole file, for comparison (faster than sha256 only without SHA
    instructions in the CPU).

Each is timed warm (file in the page cache, the best case) and cold (the file's pages dropped with
``posix_fadvise(DONTNEED)`` before each try, as on a rerun the next day or from a network drive; Linux
only).  The median of ``--repeat`` tries is printed with its ratio to ``old`` and to ``sampled``.
The temporary folder is deleted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from app.core.fingerprint import file_fingerprint, full_digest  # noqa: E402


def synthetic_tiles(channels: int, size: int, tile: int, seed: int = 0):
    """Tiles in tifffile's order (channel, row, column), varied so no two blocks hash alike."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 4096, (tile, tile), dtype=np.uint16)
    count = 0
    for _ in range(channels):
        for _ in range(0, size, tile):
            for _ in range(0, size, tile):
                count += 1
                yield base + np.uint16(count % 60000)


def write_section(path: Path, channels: int, size: int, tile: int = 1024) -> None:
    """An uncompressed tiled TIFF of ``channels x size x size`` uint16, written tile by tile."""
    import tifffile

    tifffile.imwrite(path, synthetic_tiles(channels, size, tile), shape=(channels, size, size), dtype=np.uint16,
                     tile=(tile, tile), photometric="minisblack", planarconfig="separate", bigtiff=True)


def drop_from_cache(path: Path) -> bool:
    """Evict the file's pages from the page cache (only this file); False where the OS cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def old_fingerprint(path: Path) -> dict:
    return {"file": path.name, "bytes": path.stat().st_size if path.is_file() else None}


def blake2b_file(path: Path) -> str:
    digest = hashlib.blake2b()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def timed(function: Callable[[Path], object], path: Path, repeat: int, cold: bool) -> float:
    """Median seconds of ``function(path)`` over ``repeat`` tries (page cache dropped before each when cold)."""
    times = []
    for _ in range(repeat):
        if cold:
            drop_from_cache(path)
        start = time.perf_counter()
        function(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="write the file here instead of a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stagescope-fingerprint-", dir=args.keep) as folder:
        path = Path(folder) / "section.tif"
        start = time.perf_counter()
        write_section(path, args.channels, args.size)
        size = path.stat().st_size
        print(f"{args.channels} x {args.size} x {args.size} uint16 TIFF: {size / 1e9:.2f} GB, "
              f"written in {time.perf_counter() - start:.1f} s")
        ways = {"old": old_fingerprint, "sampled": file_fingerprint, "full": full_digest, "blake2b": blake2b_file}
        can_drop = drop_from_cache(path)
        for cache in ("warm", "cold") if can_drop else ("warm",):
            if cache == "warm":
                for function in ways.values():  # fill the cache first
                    function(path)
            seconds = {name: timed(function, path, args.repeat, cache == "cold") for name, function in ways.items()}
            print(f"\n{cache} page cache (median of {args.repeat}):")
            for name, value in seconds.items():
                print(f"  {name:8s} {value * 1000:10.2f} ms   x{value / seconds['old']:10.0f} old   "
                      f"x{value / seconds['sampled']:8.1f} sampled   {size / value / 1e9:8.2f} GB/s of file")
        if not can_drop:
            print("\n(cold-cache times need posix_fadvise: Linux only)")


if __name__ == "__main__":
    main()
