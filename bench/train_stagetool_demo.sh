#!/usr/bin/env bash
# Train the two Stagetool demo models on synthetic phantom sections and evaluate them on held-out phantoms.
#
#   bash bench/train_stagetool_demo.sh OUT [DEVICE] [MINUTES] [SCALE]
#
#   OUT      output folder: models/stagetool-tubules-demo, models/stagetool-cells-demo (fp16 weights + card.json
#            with the held-out phantom numbers), results.json, results.txt, logs/, eval/
#   DEVICE   cuda (default) or cpu
#   MINUTES  training wall time of EACH model (default 3); the two models train at the same time (two processes),
#            so the whole run takes about MINUTES + 1.5 min of section generation and evaluation on a GPU
#   SCALE    full (default): 48 training + 4 validation sections of 2048 px, 4 test sections of 3072 px;
#            medium: 48 + 2 sections of 2048 px, 4 test sections of 2048 px (CPU);
#            small: 3 + 1 sections of 1024 px and 1 test section (a CPU smoke test of the whole script)
#   Environment: STAGETOOL_TRAIN="tubules cells" (the models to train; one left out must already be in
#   OUT/models), STAGETOOL_EVAL="adaptive off full" (TTA modes evaluated; at once on cuda, one after another
#   on cpu), STAGETOOL_WORK (work folder, default a new temporary one)
#
# Run from the repository root with a python that has torch, torchvision and the project's dependencies
# ($PYTHON, default `python`).  Seeds: training 1000.., validation 2000.., test 3000.. (disjoint), so the test
# numbers are on sections neither the training nor the choice of the best epoch has seen.  Everything is
# synthetic: the models are for trying the software, not for real sections.
set -euo pipefail

OUT=${1:?usage: bash bench/train_stagetool_demo.sh OUT [cuda|cpu] [MINUTES] [full|small]}
DEVICE=${2:-cuda}
MINUTES=${3:-3}
SCALE=${4:-full}
PY=${PYTHON:-python}
case "$DEVICE" in cuda|cpu) ;; *) echo "DEVICE must be cuda or cpu, not $DEVICE" >&2; exit 2;; esac
case "$SCALE" in full|medium|small) ;; *) echo "SCALE must be full, medium or small, not $SCALE" >&2; exit 2;; esac
TRAIN_KINDS=${STAGETOOL_TRAIN:-tubules cells}
EVAL_MODES=${STAGETOOL_EVAL:-adaptive off full}

mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
WORK=${STAGETOOL_WORK:-$(mktemp -d -t stagetool-demo-XXXXXX)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DRIVER="$WORK/train_stagetool_demo.py"
START=$(date +%s)

cat > "$DRIVER" <<'PYTHON'
"""Driver of bench/train_stagetool_demo.sh: gen | train KIND | eval MODE | report (see the shell script)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

OUT, WORK, DEVICE, MINUTES, SCALE = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
SCALES = {
    "full": {"n_train": 48, "n_val": 4, "n_test": 4, "size": 2048, "test_size": 3072},
    "medium": {"n_train": 48, "n_val": 2, "n_test": 4, "size": 2048, "test_size": 2048},
    "small": {"n_train": 3, "n_val": 1, "n_test": 1, "size": 1024, "test_size": 1024},
}
S = SCALES[SCALE]
SEEDS = {"train": 1000, "val": 2000, "test": 3000}
# light backbones: both models together stay under 20 MB in fp16; the paper's (ResNet-50 / ResNeXt-101) need days
RECIPES = {
    "tubules": {"backbone": "lite", "crop_size": 320, "downsample": 2, "batch": {"cuda": 8, "cpu": 2},
                "steps_per_check": {"cuda": 100, "cpu": 100}, "lr": float(os.environ.get("STAGETOOL_LR_TUBULES", 1e-3)),
                "seed": 0, "infer_tile": 512},
    "cells": {"backbone": "lite", "crop_size": 256, "downsample": 1, "batch": {"cuda": 16, "cpu": 2},
              "steps_per_check": {"cuda": 100, "cpu": 100}, "lr": 1e-3, "seed": 1, "infer_tile": 512},
}
NAMES = {"tubules": "stagetool-tubules-demo", "cells": "stagetool-cells-demo"}
TTA = ("adaptive", "off", "full")
SYNTHETIC = "synthetic training data: for trying the software, not for real sections"
CPUS = os.cpu_count() or 2


def log(*parts: object) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


# ------------------------------------------------------------------------------------ sections


def _write(job: tuple[str, int, int]) -> None:
    from app.pipelines.stagetool.phantom import write_testis

    split, seed, size = job
    markers = ("SOX9",) if split == "test" else ()
    write_testis(WORK / "data" / f"{split}-parts" / f"seed{seed}", seed=seed, count=1, size=size, markers=markers)


def gen() -> None:
    """All sections in parallel, one folder per seed; the test sections then get distinct names in one folder."""
    import multiprocessing

    jobs = [("test", SEEDS["test"] + i, S["test_size"]) for i in range(S["n_test"])]
    jobs += [(split, SEEDS[split] + i, S["size"]) for split in ("train", "val") for i in range(S[f"n_{split}"])]
    start = time.monotonic()
    with multiprocessing.get_context("fork").Pool(min(len(jobs), CPUS)) as pool:
        pool.map(_write, jobs, chunksize=1)
    test = WORK / "data" / "test"
    test.mkdir(parents=True, exist_ok=True)
    for i in range(S["n_test"]):
        part = WORK / "data" / "test-parts" / f"seed{SEEDS['test'] + i}"
        name = f"testis_{i:03d}"
        for file in part.glob("testis_000*"):
            shutil.move(str(file), test / file.name.replace("testis_000", name))
        truth_path = test / f"{name}_truth.json"
        truth = json.loads(truth_path.read_text())
        truth["image"] = f"{name}.ome.tif"
        truth_path.write_text(json.dumps(truth))
    shutil.copy(WORK / "data" / "test-parts" / f"seed{SEEDS['test']}" / "README.txt", test / "README.txt")
    log(f"{len(jobs)} phantom sections written in {time.monotonic() - start:.0f} s")


def sections(split: str, kind: str) -> list:
    """In-memory training sections (DAPI plane + objects) of one split."""
    from app.core.images import read_image
    from app.pipelines.stagetool.truth import read_testis_truth
    from app.pipelines.stagetool.dataset import Section

    found = []
    for folder in sorted((WORK / "data" / f"{split}-parts").iterdir()):
        for truth in read_testis_truth(folder):
            array = np.asarray(read_image(truth["image"], channel=0))
            found.append(Section(name=f"phantom {folder.name}", objects=truth[kind], array=array,
                                 pixel_size_um=truth.get("pixel_size_um"), synthetic=True))
    return found


# ------------------------------------------------------------------------------------ training


def train_model(kind: str) -> None:
    import torch

    from app.core.atomic import atomic_write_json
    from app.core.jobs import run
    from app.pipelines.stagetool.models import max_cells
    from app.pipelines.stagetool.params import TrainParams
    from app.pipelines.stagetool.train import train

    r = RECIPES[kind]
    gpu = DEVICE == "cuda"
    threads = 2 if gpu else max(1, CPUS // 2)
    torch.set_num_threads(threads)
    if gpu:  # TF32 matmuls; cuDNN autotuning only where every conv input has a fixed shape (not the mask
        # head, whose batch is the varying number of positive RoIs: autotuning it each step cost 5x on an H200)
        torch.backends.cudnn.benchmark = kind == "cells"
        torch.set_float32_matmul_precision("high")
    train_sections, val_sections = sections("train", kind), sections("val", kind)
    batch = r["batch"][DEVICE]
    params = TrainParams(kind=kind, backbone=r["backbone"], crop_size=r["crop_size"], downsample=r["downsample"],
                         epochs=100000, crops_per_epoch=batch * (r["steps_per_check"][DEVICE] if SCALE != "small" else 10),
                         batch_size=batch, lr=r["lr"], val_crops=(32 if gpu else 16) if SCALE != "small" else 4, device=DEVICE,
                         seed=r["seed"], half=True, time_limit_s=MINUTES * 60, threads=threads,
                         loader_threads=4 if gpu else 0, init_from=os.environ.get(f"STAGETOOL_INIT_{kind.upper()}", ""))
    seeds = {split: f"{SEEDS[split]}-{SEEDS[split] + S[f'n_{split}'] - 1}" for split in ("train", "val")}
    description = (f"{SYNTHETIC}. {len(train_sections)} phantom testis sections of {S['size']} px "
                   f"(app/pipelines/stagetool/phantom.py, seeds {seeds['train']}); best epoch chosen on "
                   f"{len(val_sections)} other phantom sections (seeds {seeds['val']})")
    out = OUT / "models" / NAMES[kind]
    last = [0.0]

    def progress(event) -> None:
        if event.stage != "train" or time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            log(kind, event.stage, event.done, event.total, event.message)

    log(kind, f"{len(train_sections)} training, {len(val_sections)} validation sections on {DEVICE}"
              + (f" ({torch.cuda.get_device_name()})" if gpu else ""))
    card = run(train([], out, params, name=NAMES[kind], sections=train_sections, val_sections=val_sections,
                     data_description=description, synthetic=True), progress)
    (out / "checkpoint.pt").unlink(missing_ok=True)  # optimizer state: not shipped
    # analyse with larger tiles than the training crops: fewer seams and network calls
    data = json.loads((out / "card.json").read_text())
    data["extra"]["model"]["tile_size"] = r["infer_tile"]
    data["normalisation"]["tile_size"] = r["infer_tile"]
    if kind == "cells":
        data["extra"]["model"]["detections_per_img"] = max_cells(r["infer_tile"])
    data["training"]["train_crop_px"] = r["crop_size"]
    data["training"]["device"] = DEVICE + (f" ({torch.cuda.get_device_name()})" if gpu else "")
    atomic_write_json(out / "card.json", data)
    log(kind, "done:", card.metrics)


# ------------------------------------------------------------------------------------ evaluation


def evaluate(mode: str) -> None:
    import torch

    from app.core.atomic import atomic_write_json
    from app.core.jobs import run
    from app.pipelines.stagetool.batch import analyze_paths
    from app.pipelines.stagetool.evaluate import POOLED, cell_lists, cell_scores, load_truth
    from app.pipelines.stagetool.evaluate import evaluate_results
    from app.pipelines.stagetool.params import AnalyzeParams

    threads = max(1, min(4, CPUS // 3))
    torch.set_num_threads(threads)
    test = WORK / "data" / "test"
    files = sorted(test.glob("testis_*.ome.tif"))
    params = AnalyzeParams(tta=mode, device=DEVICE, antibodies="SOX9=SOX9", threads=threads,
                           batch_size=4 if DEVICE == "cuda" else 2, cell_score=0.3 if mode == "off" else 0.5)
    folder = WORK / "eval" / f"tta-{mode}"
    start = time.monotonic()
    result = run(analyze_paths(files, folder, params, OUT / "models" / NAMES["tubules"],
                               OUT / "models" / NAMES["cells"], force=True, synthetic=True))
    seconds = time.monotonic() - start
    if result["failed"]:
        raise SystemExit(f"evaluation {mode} failed: {result['failed']}")
    evaluations = evaluate_results(folder, test)
    pooled = evaluations.get(POOLED) or next(iter(evaluations.values()))
    report = {"tta": mode, "cell_score": params.cell_score, "seconds": round(seconds, 1),
              "sections": [f.name for f in files], "pooled": pooled,
              "per_section": {k: {"agreement": v["stages"]["agreement"], "mean_iou": v["tubules"]["mean_iou"],
                                  "mean_precision": v["cells"]["mean_precision"],
                                  "mean_sensitivity": v["cells"]["mean_sensitivity"], "AP50": v["cells"]["AP50"]}
                              for k, v in evaluations.items() if k != POOLED},
              "timing_s": {d.name: json.loads((d / "summary.json").read_text()).get("timing_s")
                           for d in sorted(folder.iterdir()) if (d / "summary.json").exists()}}
    if mode == "off":  # one pass kept down to 0.3: what other score thresholds would give
        gt, pred = [], []
        for d in sorted(folder.iterdir()):
            if (d / "objects.json").exists():
                doc = json.loads((d / "objects.json").read_text())
                g, p = cell_lists(load_truth(test, doc["image"]), doc["layers"]["cells"])
                gt.append(g)
                pred.append(p)
        report["threshold_sweep"] = {}
        for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            c = cell_scores(gt, pred, score_threshold=t)
            report["threshold_sweep"][str(t)] = {k: c[k] for k in ("AP50", "mean_precision", "mean_sensitivity",
                                                                   "mean_f1", "n_predicted")}
    (OUT / "eval").mkdir(exist_ok=True)
    atomic_write_json(OUT / "eval" / f"tta-{mode}.json", report)
    for name in ("log.txt", "batch.xlsx"):
        if (folder / name).exists():
            shutil.copy(folder / name, OUT / "eval" / f"tta-{mode}-{name}")
    log(f"evaluation tta={mode} done in {seconds:.0f} s")


# ------------------------------------------------------------------------------------ report


def _f(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report() -> None:
    from app.core.atomic import atomic_write_json

    evals = {m: json.loads((OUT / "eval" / f"tta-{m}.json").read_text()) for m in TTA
             if (OUT / "eval" / f"tta-{m}.json").exists()}
    cards = {k: json.loads((OUT / "models" / NAMES[k] / "card.json").read_text()) for k in NAMES}
    test_note = (f"{S['n_test']} held-out phantom sections of {S['test_size']} px (seeds {SEEDS['test']}-"
                 f"{SEEDS['test'] + S['n_test'] - 1}), whole-section analysis, TTA adaptive; synthetic phantoms "
                 f"are easier than tissue")
    main = evals.get("adaptive")
    if main:
        p = main["pooled"]
        tub = {k: p["tubules"][k] for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou")}
        tub.update(stage_agreement=p["stages"]["agreement"], tubules_agree=p["stages"]["agree"],
                   tubules=p["stages"]["n_tubules"], tubules_missed=p["stages"]["missed"])
        cells = {k: p["cells"][k] for k in ("AP50", "AP75", "mean_precision", "mean_sensitivity", "mean_f1")}
        cells["per_class"] = p["cells"]["per_class"]
        for kind, metrics in (("tubules", tub), ("cells", cells)):
            cards[kind]["metrics"]["test"] = {"data": test_note, **metrics}
            atomic_write_json(OUT / "models" / NAMES[kind] / "card.json", cards[kind])
    sizes = {k: (OUT / "models" / NAMES[k] / "weights.pt").stat().st_size for k in NAMES}
    summary = {"device": DEVICE, "scale": SCALE, "minutes_per_model": MINUTES, "sections": S, "seeds": SEEDS,
               "recipes": RECIPES, "weights_bytes": sizes,
               "parameters": {k: c["training"].get("parameters") for k, c in cards.items()},
               "training_seconds": {k: c["training"].get("seconds") for k, c in cards.items()},
               "epochs": {k: c["training"].get("epochs_done") for k, c in cards.items()},
               "validation": {k: c["metrics"].get("val") for k, c in cards.items()},
               "evaluation": evals, "total_seconds": round(time.time() - float(os.environ.get("START", time.time())))}
    atomic_write_json(OUT / "results.json", summary)
    lines = [f"Stagetool demo models ({SCALE}, {DEVICE}, {MINUTES} min per model); {SYNTHETIC}",
             f"parameters: tubules {summary['parameters']['tubules']}, cells {summary['parameters']['cells']}; "
             f"weights {sizes['tubules'] / 1e6:.1f} + {sizes['cells'] / 1e6:.1f} MB (fp16)",
             f"epochs (validation checks): {summary['epochs']}; training seconds {summary['training_seconds']}",
             f"validation (best epoch, crops of held-out phantoms): {json.dumps(summary['validation'])}", "",
             f"TEST: {test_note}"]
    for mode, e in evals.items():
        p = e["pooled"]
        t, c, s = p["tubules"], p["cells"], p["stages"]
        lines.append(f"tta={mode:8s} {e['seconds']:6.1f} s  stage agreement {s['agree']}/{s['n_tubules']} "
                     f"({_f(s['agreement'] and 100 * s['agreement'], 1)}%, {s['missed']} missed)  "
                     f"pixel acc {_f(t['pixel_accuracy'])} mean acc {_f(t['mean_accuracy'])} mIoU {_f(t['mean_iou'])} "
                     f"fwIoU {_f(t['fw_iou'])}  cells AP50 {_f(c['AP50'], 2)} AP75 {_f(c['AP75'], 2)} "
                     f"precision {_f(c['mean_precision'])} sensitivity {_f(c['mean_sensitivity'])} "
                     f"(cell score >= {e['cell_score']})")
    if main:
        lines += ["", "per cell type at IoU 0.5 (tta adaptive)   precision sensitivity   F1    truth predicted"]
        for name, v in main["pooled"]["cells"]["per_class"].items():
            lines.append(f"  {name:30s} {_f(v['precision']):>9s} {_f(v['sensitivity']):>9s} {_f(v['f1']):>7s} "
                         f"{v['truth']:6d} {v['predicted']:6d}")
        lines.append("stage confusion (rows truth, columns predicted + missed): "
                     + json.dumps(main["pooled"]["stages"]["confusion"]["matrix"]))
    if "off" in evals and "threshold_sweep" in evals["off"]:
        lines += ["", "one pass (tta off), cell score threshold sweep: threshold AP50 precision sensitivity F1"]
        for t, v in evals["off"]["threshold_sweep"].items():
            lines.append(f"  {t:4s} {_f(v['AP50'], 2):>6s} {_f(v['mean_precision'])} {_f(v['mean_sensitivity'])} "
                         f"{_f(v['mean_f1'])}")
    lines.append(f"\ntotal {summary['total_seconds']} s")
    (OUT / "results.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    action = sys.argv[6]
    {"gen": gen, "report": report}.get(action, lambda: None)()
    if action == "train":
        train_model(sys.argv[7])
    elif action == "eval":
        evaluate(sys.argv[7])
PYTHON

driver() { "$PY" "$DRIVER" "$OUT" "$WORK" "$DEVICE" "$MINUTES" "$SCALE" "$@"; }
main() {  # a function: bash reads all of it before running, so editing the file mid-run is safe
  export START
  echo "work folder $WORK; output $OUT"
  [ "$DEVICE" = cuda ] && (nvidia-smi -L || true)
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"

  [ -d "$WORK/data/test" ] || driver gen 2>&1 | tee "$OUT/logs/gen.log"
  PIDS=()
  for KIND in $TRAIN_KINDS; do
    driver train "$KIND" > "$OUT/logs/train-$KIND.log" 2>&1 &
    PIDS+=($!)
  done
  FAILED=0
  for PID in "${PIDS[@]}"; do wait "$PID" || FAILED=1; done
  for KIND in $TRAIN_KINDS; do tail -n 3 "$OUT/logs/train-$KIND.log"; done
  [ $FAILED = 0 ] || { echo "training failed (logs above)"; exit 1; }
  PIDS=()
  for MODE in $EVAL_MODES; do
    if [ "$DEVICE" = cuda ]; then
      driver eval "$MODE" > "$OUT/logs/eval-$MODE.log" 2>&1 &
      PIDS+=($!)
    else
      driver eval "$MODE" > "$OUT/logs/eval-$MODE.log" 2>&1 || { echo "evaluation $MODE failed:"; tail -n 30 "$OUT/logs/eval-$MODE.log"; }
    fi
  done
  for PID in "${PIDS[@]}"; do wait "$PID" || { echo "an evaluation failed:"; tail -n 30 "$OUT/logs/eval-"*.log; }; done
  driver report
  echo "done in $(( $(date +%s) - START )) s; models in $OUT/models; work files in $WORK"
}
main
