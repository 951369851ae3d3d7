"""Benchmark of the Stagetool section flow: the paper's flow against ours, and network speed per backbone.

    .venv/bin/python bench/stagetool.py [--size 8000] [--seed 7] [--threads 1] [--out DIR] [--flows F,F]
                                        [--tubule-model M] [--cell-model M] [--skip-flows] [--skip-backbones]

1. A phantom testis section of about ``size`` x ``size`` px (DAPI + SOX9, with ground truth) is
   analysed once per flow with the shipped demo models, each run in a fresh process so its peak
   RSS is its own:
   - paper: every tile (no tissue skip), one tile per network call, every cell tile at
     0/90/180/270 degrees (``tta=full``);
   - ours (the default): tiles without tissue skipped, tiles batched, one pass (``tta=off``, cells
     kept from score 0.4, chosen on validation phantoms, one box per cell across types);
   - ours-ad: ours with rotations only where the single pass is uncertain (``tta=adaptive``);
   - ours-4r: ours with all four rotations everywhere (what skipping and batching alone give).
   Printed: seconds, peak memory, tiles run, and the accuracy of each on the phantom's ground
   truth (tubule stage agreement, cell mean precision / sensitivity, AP50, AP75), then each speed
   ratio against the paper's flow with the points lost (target >= 3x at no more than 1 point of
   accuracy lost) and peak memory (target < 4 GB).
2. Tiles per second of each network (tubule Mask R-CNN, cell Faster R-CNN) at each backbone, on
   1024 px tiles (untrained weights: speed does not depend on them), on the CPU here and on the
   GPU when one is present.

Numbers on phantoms are easier than on tissue; they measure the software, not biology.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FLOWS = {
    "paper": {"tta": "full", "skip_background": False, "batch_size": 1},
    "ours": {"tta": "off", "skip_background": True, "batch_size": 4},  # the default: one pass, cells from 0.4
    "ours-ad": {"tta": "adaptive", "skip_background": True, "batch_size": 4},  # rotations around uncertain cells
    "ours-4r": {"tta": "full", "skip_background": True, "batch_size": 4},  # all 4 rotations everywhere
}
METRICS = ("agreement", "precision", "sensitivity", "AP50", "AP75")  # AP in points already, the rest x 100
BACKBONES = ("tiny", "lite-s", "lite", "resnet18", "resnet50", "resnext101_32x8d")


def _rss_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------ section


def make_section(folder: Path, size: int, seed: int) -> tuple[Path, Path]:
    """Write a phantom section (DAPI + SOX9) and its truth with the CLI's phantom writer; (image, truth folder)."""
    from app.pipelines.stagetool.phantom import write_testis

    written = write_testis(folder, seed=seed, count=1, size=size, markers=("SOX9",))
    return written[0], folder


def one_flow(flow: str, section: Path, truth: Path, out: Path, threads: int, tubule_model: str | None,
             cell_model: str | None, device: str = "auto") -> dict:
    """Run one flow in this process; seconds, peak memory, tile counts and accuracy."""
    import torch

    from app.core.jobs import run
    from app.pipelines.stagetool.batch import analyze_paths
    from app.pipelines.stagetool.evaluate import evaluate_results
    from app.pipelines.stagetool.params import AnalyzeParams

    torch.set_num_threads(threads)
    params = AnalyzeParams(antibodies="SOX9=SOX9", threads=threads, device=device, **FLOWS[flow])
    start = time.perf_counter()
    run(analyze_paths([section], out, params, tubule_model, cell_model, force=True, synthetic=True))
    seconds = time.perf_counter() - start
    analysis_mb = _rss_mb()  # peak of the analysis itself, before evaluation reads the truth
    evaluation = next(iter(evaluate_results(out, truth).values()))
    name = next(p for p in out.iterdir() if (p / "summary.json").exists())
    tiles = json.loads((name / "summary.json").read_text())["tiles"]
    cells, stages = evaluation["cells"], evaluation["stages"]
    return {"flow": flow, "seconds": seconds, "peak_mb": analysis_mb, "peak_mb_with_eval": _rss_mb(), "tiles": tiles,
            "agreement": stages["agreement"], "tubules": stages["n_tubules"],
            "precision": cells["mean_precision"], "sensitivity": cells["mean_sensitivity"], "AP50": cells["AP50"],
            "AP75": cells["AP75"], "mIoU": evaluation["tubules"]["mean_iou"]}


def run_flows(args: argparse.Namespace) -> None:
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="stagetool-bench-"))
    start = time.perf_counter()
    section, truth = make_section(work / "section", args.size, args.seed)
    from app.core.images import open_image

    with open_image(section) as image:
        shape = (image.info.height, image.info.width)
    print(f"phantom section {shape[1]} x {shape[0]} px (seed {args.seed}), written in {time.perf_counter() - start:.0f} s:"
          f" {section}")
    results = {}
    flows = [f for f in FLOWS if f in args.flows.split(",")]
    if "paper" not in flows:
        raise SystemExit("--flows must include paper (the baseline)")
    for flow in flows:
        command = [sys.executable, __file__, "--one", flow, "--section", str(section), "--truth", str(truth),
                   "--out", str(work / f"run-{flow}"), "--threads", str(args.threads), "--device", args.device]
        for option, value in (("--tubule-model", args.tubule_model), ("--cell-model", args.cell_model)):
            if value:
                command += [option, value]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            print(done.stdout[-2000:], done.stderr[-4000:])
            raise SystemExit(f"{flow} flow failed")
        results[flow] = json.loads(done.stdout.strip().splitlines()[-1])
    print("\nsynthetic phantom section (easier than tissue); same models, same section")
    print(f"{'flow':7s} {'seconds':>8s} {'peak MB':>8s} {'cell tiles':>10s} {'rotated':>8s} {'tub tiles':>9s} "
          f"{'stage agr':>9s} {'cell prec':>9s} {'cell sens':>9s} {'AP50':>6s} {'AP75':>6s} {'tub mIoU':>8s}")
    for flow in flows:
        r = results[flow]
        t = r["tiles"]
        print(f"{flow:7s} {r['seconds']:8.1f} {r['peak_mb']:8.0f} {t['cell_tiles_analysed']:10d} "
              f"{t['cell_tiles_rotated']:8d} {t['tubule_tiles_analysed']:9d} {_pct(r['agreement']):>9s} "
              f"{_fmt(r['precision']):>9s} {_fmt(r['sensitivity']):>9s} {_fmt(r['AP50'], 1):>6s} {_fmt(r['AP75'], 1):>6s} "
              f"{_fmt(r['mIoU']):>8s}")
    paper = results["paper"]
    for name in (f for f in flows if f != "paper"):
        ours = results[name]
        lost = {k: (paper[k] - ours[k]) * (1 if k.startswith("AP") else 100) for k in METRICS
                if paper[k] is not None and ours[k] is not None}
        print(f"speed ratio paper / {name}: {paper['seconds'] / ours['seconds']:.2f}x (target >= 3x); points lost "
              f"(target <= 1): " + ", ".join(f"{k} {v:+.2f}" for k, v in lost.items()))
    print("peak memory of the analysis (MB; target < 4096): "
          + ", ".join(f"{f} {results[f]['peak_mb']:.0f} (with evaluation {results[f]['peak_mb_with_eval']:.0f})"
                      for f in flows))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


# ------------------------------------------------------------------------------------ backbones


def backbone_speeds(threads: int, tile: int = 1024, repeats: int = 2, devices: list[str] | None = None,
                    backbones: list[str] | tuple[str, ...] = BACKBONES) -> None:
    """Tiles per second of each network at each backbone, CPU (and GPU when present)."""
    import torch

    from app.pipelines.stagetool.models import build_model, default_config

    torch.set_num_threads(threads)
    devices = [d for d in (devices or ["cpu", "cuda"]) if d == "cpu" or torch.cuda.is_available()]
    print(f"\nnetwork speed on {tile} px tiles (tiles/s; untrained weights; {threads} CPU thread(s))")
    print(f"{'backbone':18s} " + " ".join(f"{kind + ' ' + dev:>14s}" for dev in devices for kind in ("tubules", "cells")))
    for backbone in backbones:
        row = []
        for device in devices:
            for kind in ("tubules", "cells"):
                config = default_config(kind, backbone, tile_size=tile)
                net = build_model(config).to(device).eval()
                net.roi_heads.score_thresh = 0.5
                images = [torch.rand(1, tile, tile, device=device)]
                budget = 60.0 if device == "cpu" else 10.0
                with torch.no_grad():
                    start = time.perf_counter()
                    net(images)  # warm-up
                    first = time.perf_counter() - start
                    n = 0 if first > budget / 2 else repeats
                    start = time.perf_counter()
                    for _ in range(n):
                        net(images)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    seconds = (time.perf_counter() - start) / n if n else first
                row.append(f"{1 / seconds:14.3f}")
                del net
        print(f"{backbone:18s} " + " ".join(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument("--tubule-model", default=None)
    parser.add_argument("--cell-model", default=None)
    parser.add_argument("--skip-flows", action="store_true")
    parser.add_argument("--flows", default=",".join(FLOWS), help="flows to run (paper always)")
    parser.add_argument("--skip-backbones", action="store_true")
    parser.add_argument("--devices", default="cpu,cuda", help="devices of the backbone table (cuda only when present)")
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="backbones of the speed table")
    parser.add_argument("--tile", type=int, default=1024, help="tile side of the speed table (px)")
    parser.add_argument("--device", default="auto", help="device of the two flows (auto, cpu, cuda)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--section", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--truth", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = one_flow(args.one, Path(args.section), Path(args.truth), Path(args.out), args.threads,
                          args.tubule_model, args.cell_model, args.device)
        print(json.dumps(result))
        return
    if not args.skip_flows:
        run_flows(args)
    if not args.skip_backbones:
        backbone_speeds(args.threads, args.tile, devices=args.devices.split(","), backbones=args.backbones.split(","))


if __name__ == "__main__":
    main()
