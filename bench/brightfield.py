"""Benchmark of the brightfield pipeline on the real sephaCe data: speed, memory, held-out scores.

    .venv/bin/python bench/brightfield.py [--model DIR] [--field ../shared/data/brightfield-sephace/set2]
                                          [--repeats 3] [--threads N]

1. Seconds and peak memory per 1024 x 1344 field (6 planes) with the shipped model: whole-field
   inference (one pass) against tiled inference (256 and 128 px tiles at model scale, i.e. 1024
   and 512 px of the field, 64 px overlap), each in a fresh process so its peak RSS is its own
   ("+ over imports" = peak minus the RSS after importing numpy/torch/scikit-image).  "predict" is the probability map
   only; "segment" adds threshold + watershed + per-nucleus measurements (what `brightfield
   segment` does besides reading and writing files).  Target: segment < 2 s on this 2-core CPU.
2. Object F1 (IoU 0.5), pixel F1 and AUROC of the shipped model on the held-out field, against
   labels derived from that field's DAPI image (the model never saw this field).

Prints each figure with its target and the ratio (target / measured for times, > 1 is better).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_FIELD = REPO.parent / "shared" / "data" / "brightfield-sephace" / "set2"
DEFAULT_MODEL = REPO / "models" / "brightfield-sephace"
TARGET_S = 2.0
MODES = {"whole": (1024, 64), "tiled-256": (256, 64), "tiled-128": (128, 64)}  # (tile, overlap) at model scale


def _rss_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(mode: str, model_dir: Path, field: Path, repeats: int, threads: int) -> dict:
    """Time one inference mode in this process; returns seconds and peak memory."""
    from app.core.jobs import run
    from app.pipelines.brightfield.predict import BrightfieldModel, probability_job, segment
    from app.pipelines.brightfield.stack import load_stack

    imported = _rss_mb()
    model = BrightfieldModel.load(model_dir)
    stack = load_stack(field)
    tile, overlap = MODES[mode]
    params = dataclasses.replace(model.segment, tile_size=tile, overlap=overlap, threads=threads)
    run(probability_job(model, model.planes(stack), params))  # warm-up (allocations, oneDNN kernels)
    predict, full = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        run(probability_job(model, model.planes(stack), params))
        predict.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = run(segment(model, stack, params))
        full.append(time.perf_counter() - start)
    return {"mode": mode, "predict_s": statistics.median(predict), "segment_s": statistics.median(full),
            "peak_mb": _rss_mb(), "imports_mb": imported, "nuclei": result.count}


def held_out(model_dir: Path, field: Path, threads: int) -> dict:
    """Scores of the model on a field with a DAPI image, labels derived from it."""
    from app.core.jobs import run
    from app.pipelines.brightfield.experiments import evaluate
    from app.pipelines.brightfield.predict import BrightfieldModel
    from app.pipelines.brightfield.train import load_training_field

    model = BrightfieldModel.load(model_dir)
    test, _ = load_training_field(field)
    params = dataclasses.replace(model.segment, threads=threads)
    return run(evaluate(model, test, params))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--field", type=Path, default=DEFAULT_FIELD)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the pipeline's)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: time one mode in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.model, args.field, args.repeats, args.threads)))
        return 0
    if not args.field.is_dir():
        print(f"skipped: real data folder {args.field} not present")
        return 0
    from app.pipelines.brightfield.train import default_threads

    threads = args.threads or default_threads()
    print(f"model {args.model}  field {args.field}  threads {threads}  repeats {args.repeats} (median)")
    rows = []
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--one", mode, "--model", str(args.model), "--field",
                              str(args.field), "--repeats", str(args.repeats)]
                             + (["--threads", str(args.threads)] if args.threads else []),
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    whole = rows[0]
    print(f"{'mode':10s} {'predict s':>9s} {'segment s':>9s} {'vs whole':>8s} {'peak MB':>8s} {'+ over imports':>14s} "
          f"{'nuclei':>6s}  target segment < {TARGET_S:g} s: ratio")
    for r in rows:
        print(f"{r['mode']:10s} {r['predict_s']:9.3f} {r['segment_s']:9.3f} {r['segment_s'] / whole['segment_s']:8.2f} "
              f"{r['peak_mb']:8.0f} {r['peak_mb'] - r['imports_mb']:14.0f} {r['nuclei']:6d}  {TARGET_S / r['segment_s']:.2f}")
    scores = held_out(args.model, args.field, threads)
    print(f"held-out {args.field.name} (labels from its DAPI): object F1 {scores['object_f1']:.3f} at IoU 0.5 "
          f"(precision {scores['object_precision']:.3f}, recall {scores['object_recall']:.3f}; "
          f"{scores['n_true']} true, {scores['n_pred']} found)  pixel F1 {scores['pixel_f1']:.3f}  AUROC {scores['auroc']:.3f}")
    print("held-out AP (TP/(TP+FP+FN)): " + "  ".join(f"{k} {scores[k]:.3f}" for k in ("AP50", "AP60", "AP70", "AP80", "AP90")))
    print(f"object F1 target 0.8: ratio {scores['object_f1'] / 0.8:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
