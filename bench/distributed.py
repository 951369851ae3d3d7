"""Batch throughput on a Dask LocalCluster (1 and 2 worker processes) against the plain local batch.

    nice -n 10 python bench/distributed.py [--images 12] [--size 128] [--workers 1,2]

Kaizen with the shipped kaizen-nuclei model on synthetic nuclei phantoms (app.core.phantoms), the
cheapest real pipeline.  Each configuration writes a fresh output folder through
:func:`app.batch.run_batch`, the code the CLI runs.  Reported per configuration:

- wall: the whole call, cluster start-up and worker imports included;
- span: first task start to last task end (what the batch costs once workers are up), and
  images/s over the span, as a ratio to the local batch;
- overhead per task: worker-seconds per image (span x workers / images) minus the time the task
  spent inside the pipeline; and the same for the ``noop`` pipeline (read the image, write a small
  result), whose whole time is overhead: dispatch, result transfer, folder rename, task.json.

The local batch runs in this process with torch's own thread count, and again with one torch
thread; each Dask worker has one thread (torch then uses one core).  On a busy machine torch's
threads can spin against each other, which is why both local rows are shown.  On a 2-core machine shared with other work, 2 workers cannot
double the throughput of a local batch that already uses both cores: the ratio that matters for a
lab is workers on separate machines, where each brings its own cores or GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
# this file's own folder first on sys.path would make `import distributed` import this file, not dask's package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from app.batch import run_batch  # noqa: E402


def write_phantoms(folder: Path, count: int, size: int) -> Path:
    """``count`` nuclei phantoms of ``size`` px as float32 TIFFs."""
    import tifffile

    from app.core.phantoms import nuclei

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        tifffile.imwrite(folder / f"phantom{i:03d}.tif", nuclei(seed=i, size=size, count=size // 10).image
                         .astype(np.float32))
    return folder


def measure(pipeline: str, images: Path, out: Path, cluster: str, workers: int, params: dict | None = None) -> dict:
    """Run one batch and return wall, span, images/s and overhead per task."""
    start = time.perf_counter()
    result = run_batch(pipeline, [images], out, cluster=cluster, params=params)
    wall = time.perf_counter() - start
    records = [r for r in result["records"] if r["status"] == "done"]
    if len(records) != len(result["records"]):
        raise SystemExit(f"{pipeline} on {cluster or 'local'}: not every image finished: {result['counts']}")
    span = max(r["finished"] for r in records) - min(r["started"] for r in records)
    work = float(np.mean([r.get("work_seconds", 0.0) for r in records]))
    per_image = span * workers / len(records)
    return {"wall": wall, "span": span, "rate": len(records) / span, "per_image": per_image, "work": work,
            "overhead": per_image - work,
            "devices": sorted({r["device"] for r in records}), "loads": sum(bool(r.get("model_loaded")) for r in records)}


def table(rows: list[tuple[str, dict[str, Any]]], title: str) -> str:
    """Markdown table of the configurations, throughput as ratios to the two local batches (rows 0 and 1)."""
    local, local1 = rows[0][1], rows[1][1]
    lines = [f"### {title}", "",
             "| configuration | wall s (incl. start-up) | span s | images/s | ratio to local | ratio to local 1 thread | "
             "worker s/image | work s/image | overhead s/task | device | model loads |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in rows:
        lines.append(f"| {name} | {m['wall']:.1f} | {m['span']:.2f} | {m['rate']:.2f} | "
                     f"{m['rate'] / local['rate']:.2f} | {m['rate'] / local1['rate']:.2f} | "
                     f"{m['per_image']:.3f} | {m['work']:.3f} | {m['overhead']:.3f} | "
                     f"{', '.join(m['devices'])} | {m['loads']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", default="1,2", help="LocalCluster sizes, comma separated")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.workers.split(",") if n.strip()]
    import os

    import torch

    print(f"{args.images} nuclei phantoms of {args.size} px; {os.cpu_count()} CPU cores; "
          f"local batch with torch {torch.get_num_threads()} threads; cuda: {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        images = write_phantoms(Path(tmp) / "images", args.images, args.size)
        for pipeline, params in (("kaizen", None), ("noop", {"seconds": 0})):
            rows = [("local batch (this process)", measure(pipeline, images, Path(tmp) / f"{pipeline}-local", "", 1,
                                                         params))]
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            rows.append(("local batch, torch 1 thread", measure(pipeline, images, Path(tmp) / f"{pipeline}-local1", "",
                                                                1, params)))
            torch.set_num_threads(threads)
            for n in sizes:
                rows.append((f"LocalCluster {n} worker process{'es' if n > 1 else ''}",
                             measure(pipeline, images, Path(tmp) / f"{pipeline}-{n}", f"local:{n}", n, params)))
            print()
            print(table(rows, f"{pipeline}: {args.images} images"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
