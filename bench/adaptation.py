"""From a lab's first sections to models trained on its own tissue: the correct -> train -> re-run loop, measured.

    .venv/bin/python bench/adaptation.py [--styles widefield,cryosection] [--ks 1,2,4] [--starts fine-tune,scratch]
                                         [--size 1536] [--heldout 4] [--minutes 4] [--kinds cells,tubules]
                                         [--work DIR] [--seed 7000] [--threads 1]

For each phantom style (:mod:`app.pipelines.stagetool.phantom_style`: sections as another lab
would image them) the shipped demo models analyse a pool of sections and ``--heldout`` others.
k = 0 is the demo models on the held-out sections, seen at the models' pixel size (and, for
comparison, at the sections' own pixel size, as before ``match_pixel_size``).  For each k, k pool sections are
corrected as a careful user would (:mod:`app.pipelines.stagetool.corrections`, from the truth): the k
the app suggests first (``stagetool rank`` on the demo's analysis: most new stages, then most doubt;
``--choose first`` takes them by name, as before).  The edits go into the run's ``edits.json`` exactly as the viewer writes them, and their clicks are
counted.  Usable tubules the tubule model missed need an outline drawn (16 clicks each); the
outline edit is the GUI's, so here the drawn outline is the truth's mask, added to the tubule
training data beside the corrected results.  Then both models are trained on the k corrected
sections, each for ``--minutes`` of CPU time (one torch thread), once fine-tuned from the demo
model (``--init-from``, lr 2e-4) and once from random weights (lr 1e-3, the demo recipe; its tubule
model gets the demo's composition stager so both stage tubules from their cells); each new cell model
then has its stager refitted on the cells it finds in the corrected sections, as the app's trainer does
(``--no-refit-stager`` leaves it out), and the held-out sections are analysed again.  Printed per row: clicks, training minutes, stage agreement (IoU >= 0.5
matches), cell mean precision / sensitivity and AP50 / AP75, tubule mIoU.

Goal (issue 17): with <= 2 corrected sections and <= 20 min of CPU fine-tuning, stage agreement
>= 95% and cell sensitivity >= 0.85 on held-out sections of that style; fine-tuning beats
from-scratch.  Numbers are on synthetic phantoms, which are easier than tissue.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEMO = {"cells": REPO / "models" / "stagetool-cells-demo", "tubules": REPO / "models" / "stagetool-tubules-demo"}
# the demo models' recipes (bench/train_stagetool_demo.sh): crops and scale
RECIPE = {"cells": {"crop_size": 256, "downsample": 1}, "tubules": {"crop_size": 320, "downsample": 2}}
LR = {"fine-tune": 2e-4, "scratch": 1e-3}


def log(*parts: object) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


def make_phantoms(work: Path, style: str, size: int, pool: int, heldout: int, seed: int) -> tuple[Path, Path]:
    """The pool of sections to correct and the held-out ones, with truth, in two folders."""
    from app.pipelines.stagetool.phantom import write_testis

    folders = (work / style / "pool", work / style / "heldout")
    for folder, count, first in zip(folders, (pool, heldout), (seed, seed + 500)):
        if not (folder / "README.txt").exists():
            write_testis(folder, seed=first, count=count, size=size, markers=(), style=style)
    return folders


def analyze(folder: Path, out: Path, tubule_model: Path, cell_model: Path, threads: int,
            match_pixel_size: bool = True) -> float:
    """Analyse every section of a phantom folder into ``out`` through the app's one runner; returns the seconds."""
    import dataclasses

    from app.cli.pipelines import analyze_folder
    from app.pipelines.contract import Item
    from app.pipelines.stagetool.params import AnalyzeParams
    from app.pipelines.stagetool.predict import section_name

    start = time.monotonic()
    params = AnalyzeParams(threads=threads, device="cpu", cell_tile=512, tubule_tile=512,
                           match_pixel_size=match_pixel_size)
    values = {f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.init}
    items = [Item(section_name(p), (str(p.resolve()),), meta={"synthetic": True})
             for p in sorted(folder.glob("*.ome.tif"))]
    analyze_folder("stagetool", items, out, {"tubules": str(tubule_model), "cells": str(cell_model)}, values,
                   quiet=True)
    return time.monotonic() - start


def scores(results: Path, truth: Path) -> dict[str, Any]:
    """Pooled evaluation of a results folder against its truth: the table's columns."""
    from app.pipelines.stagetool.evaluate import POOLED, evaluate_results

    evaluations = evaluate_results(results, truth, force=True)
    pooled = evaluations.get(POOLED) or next(iter(evaluations.values()))
    stages, cells = pooled["stages"], pooled["cells"]
    return {"agree": stages["agree"], "n_tubules": stages["n_tubules"], "missed": stages["missed"],
            "agreement": stages["agreement"], "precision": cells["mean_precision"],
            "sensitivity": cells["mean_sensitivity"], "AP50": cells["AP50"], "AP75": cells["AP75"],
            "mIoU": pooled["tubules"]["mean_iou"]}


def uncertainty_vs_errors(results: Path, truth: Path) -> list[str]:
    """Per section: the rank score next to its cell F1 and stage agreement (does the score point at errors?)."""
    from app.pipelines.stagetool.evaluate import evaluate_results
    from app.pipelines.stagetool.uncertainty import rank_sections

    evaluations = evaluate_results(results, truth, force=True)
    lines = []
    for row in rank_sections(results):
        e = evaluations[row["section"]]
        share = e["stages"]["agreement"]
        lines.append(f"  {row['section']}: uncertainty {row['score']:.3f}, cell F1 {e['cells']['mean_f1'] or 0:.3f}, "
                     f"stages {'-' if share is None else f'{100 * share:.0f}%'}")
    return lines


def correct_pool(pool_results: Path, pool: Path) -> dict[str, Any]:
    """Simulated corrections of every pool section into the run's edits.json; clicks and missed tubules per section."""
    from app.core.edits import write_edits
    from app.core.results import read_objects
    from app.pipelines.stagetool.batch import write_section_outputs
    from app.pipelines.stagetool.corrections import simulate
    from app.pipelines.stagetool.evaluate import load_truth

    edits, per_section = [], {}
    for section_dir in sorted(p.parent for p in pool_results.glob("*/predictions.json")):
        doc = read_objects(section_dir / "predictions.json")
        corrections = simulate(doc, load_truth(pool, doc["image"]))
        edits += corrections.edits
        per_section[doc["image"]] = {"clicks": corrections.clicks, "counts": corrections.counts,
                                     "missed": corrections.missed_tubules}
    write_edits(pool_results, edits)  # what the viewer's undo stack writes
    for section_dir in sorted(p.parent for p in pool_results.glob("*/predictions.json")):
        write_section_outputs(section_dir, edits, force=True)
    return per_section


def training_sections(pool_results: Path, pool: Path, names: list[str], kind: str,
                      missed: dict[str, list[int]]) -> list[Any]:
    """The corrected sections (edits applied) as training data; for tubules the missed outlines drawn in."""
    from app.core.annotations import AnnotatedObject
    from app.pipelines.stagetool.dataset import sections_from_results
    from app.pipelines.stagetool.evaluate import load_truth
    from scipy import ndimage as ndi

    sections = []
    for name in names:
        (section,) = sections_from_results(pool_results / name, kind, keep_empty=True)
        if kind == "tubules" and missed.get(name):
            truth = load_truth(pool, name)
            found = ndi.find_objects(truth.tubule_labels)
            for tid in missed[name]:
                slices = found[tid - 1]
                section.objects.append(AnnotatedObject(
                    id=10_000 + tid, category=truth.tubule_stages[tid], mask=truth.tubule_labels[slices] == tid,
                    mask_offset=(slices[0].start, slices[1].start)))
        sections.append(section)
    return sections


def train_model(kind: str, start: str, sections: list[Any], out: Path, minutes: float, threads: int,
                outlines: list[list[Any]] | None = None) -> float:
    """Train one model for ``minutes`` on the corrected sections; returns the seconds it trained.

    A cell model's stager is then refitted on the cells it finds in those sections (``outlines``: each
    section's corrected, staged tubules), as the app's trainer does; its seconds are counted too.
    """
    from app.core.atomic import atomic_write_json
    from app.core.jobs import run
    from app.pipelines.stagetool.models import max_cells
    from app.pipelines.stagetool.fitting import refit_for_cell_model
    from app.pipelines.stagetool.params import TrainParams
    from app.pipelines.stagetool.train import train

    recipe = RECIPE[kind]
    params = TrainParams(kind=kind, backbone="lite", crop_size=recipe["crop_size"], downsample=recipe["downsample"],
                         epochs=100_000, crops_per_epoch=50, batch_size=2, lr=LR[start], val_crops=4,
                         val_fraction=0.0, device="cpu", seed=0, half=True, time_limit_s=minutes * 60,
                         threads=threads, init_from=str(DEMO[kind]) if start == "fine-tune" else "")
    card = run(train([], out, params, name=out.name, sections=sections, synthetic=True,
                     data_description=f"{len(sections)} corrected phantom section(s)"))
    (out / "checkpoint.pt").unlink(missing_ok=True)
    seconds = float(card.training.get("seconds") or 0.0)
    data = json.loads((out / "card.json").read_text())
    data["extra"]["model"]["tile_size"] = 512  # analyse with the demo models' tiles
    if kind == "cells":
        data["extra"]["model"]["detections_per_img"] = max_cells(512)
    if kind == "tubules" and "composition" not in data["extra"]:  # from scratch: the demo's stager, as fine-tuning keeps
        data["extra"]["composition"] = json.loads((DEMO["tubules"] / "card.json").read_text())["extra"]["composition"]
    atomic_write_json(out / "card.json", data)
    if kind == "cells" and outlines is not None:  # as "Train on my corrections" does after a cell model
        started = time.monotonic()
        refit = run(refit_for_cell_model(out, sections, outlines, DEMO["tubules"], "cpu", threads))
        seconds += time.monotonic() - started
        log(out.name, "stager refit:", refit and refit["data"])
    return seconds


def format_row(row: dict[str, Any]) -> str:
    """One markdown table row."""
    share = f"{100 * row['agreement']:.0f}%" if row.get("agreement") is not None else "-"

    def num(key: str, digits: int) -> str:
        value = row.get(key)
        return "-" if value is None else f"{value:.{digits}f}"
    return (f"| {row['style']} | {row['k']} | {row['start']} | {row['clicks']} | {row['outlines']} | "
            f"{row['train_min']:.1f} | {row['agree']}/{row['n_tubules']} ({share}) | {row['missed']} | "
            f"{num('precision', 3)} | {num('sensitivity', 3)} | {num('AP50', 1)} | {num('AP75', 1)} | {num('mIoU', 3)} |")


HEADER = ("| style | k | start | clicks | outlines | train min | stages agree | tubules missed | cell precision | "
          "cell sensitivity | AP50 | AP75 | tubule mIoU |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def bench_style(style: str, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Every row of one style: k = 0 (demo models), then each k and start."""
    work = args.work / style
    pool, heldout = make_phantoms(args.work, style, args.size, max(args.ks), args.heldout, args.seed)
    log(style, "phantoms ready")
    unmatched = work / "k0-native-pixels"  # the demo models shown the section's own pixels (before matching)
    analyze(heldout, unmatched, DEMO["tubules"], DEMO["cells"], args.threads, match_pixel_size=False)
    rows.append({"style": style, "k": 0, "start": "demo, section's own pixels", "clicks": 0, "outlines": 0,
                 "train_min": 0.0, **scores(unmatched, heldout)})
    log(style, "k=0 without pixel-size matching:", format_row(rows[-1]))
    baseline = work / "k0"
    seconds = analyze(heldout, baseline, DEMO["tubules"], DEMO["cells"], args.threads)
    rows.append({"style": style, "k": 0, "start": "demo", "clicks": 0, "outlines": 0, "train_min": 0.0,
                 **scores(baseline, heldout)})
    log(style, f"k=0 in {seconds:.0f} s:", format_row(rows[-1]))
    log(style, "held-out sections, most uncertain first:\n" + "\n".join(uncertainty_vs_errors(baseline, heldout)))
    pool_results = work / "pool-demo"
    analyze(pool, pool_results, DEMO["tubules"], DEMO["cells"], args.threads)
    from app.pipelines.stagetool.uncertainty import rank_sections

    suggested = rank_sections(pool_results)  # the app's order, before any correction
    log(style, "suggested order:", ", ".join(f"{r['section']} (doubt {r['score']:.3f}, adds {r['adds_stages']})"
                                              for r in suggested))
    per_section = correct_pool(pool_results, pool)
    names = [r["section"] for r in suggested] if args.choose == "suggested" else sorted(per_section)
    log(style, "corrections:", json.dumps(per_section))
    for k in sorted(args.ks):
        chosen = names[:k]
        from app.pipelines.stagetool.corrections import CLICKS

        clicks = sum(per_section[n]["clicks"] for n in chosen)
        outlines = sum(len(per_section[n]["missed"]) for n in chosen)
        if "tubules" not in args.kinds:  # outlines only matter for training the tubule model
            clicks, outlines = clicks - CLICKS["outline"] * outlines, 0
        missed = {n: per_section[n]["missed"] for n in chosen}
        for start in args.starts:
            if start == "scratch" and args.scratch_ks is not None and k not in args.scratch_ks:
                continue
            folder = work / f"k{k}-{start}"
            models = {kind: DEMO[kind] for kind in ("cells", "tubules")}
            trained = 0.0
            staged = [section.objects for section in training_sections(pool_results, pool, chosen, "tubules", missed)]
            for kind in args.kinds:
                models[kind] = folder / f"{kind}-model"
                trained += train_model(kind, start, training_sections(pool_results, pool, chosen, kind, missed),
                                       models[kind], args.minutes, args.threads,
                                       staged if args.refit_stager else None)
            analyze(heldout, folder / "heldout", models["tubules"], models["cells"], args.threads)
            rows.append({"style": style, "k": k, "start": start, "sections": chosen, "clicks": clicks, "outlines": outlines,
                         "train_min": trained / 60, **scores(folder / "heldout", heldout)})
            log(style, format_row(rows[-1]))
            (args.work / "rows.json").write_text(json.dumps(rows, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--styles", default="widefield,cryosection")
    parser.add_argument("--ks", default="1,2,4", help="corrected sections per row (k = 0 is always measured)")
    parser.add_argument("--starts", default="fine-tune,scratch")
    parser.add_argument("--scratch-ks", default=None, help="the ks that also train from scratch (default: all)")
    parser.add_argument("--kinds", default="cells,tubules", help="which models are trained on the corrections")
    parser.add_argument("--size", type=int, default=1536, help="section side in pixels")
    parser.add_argument("--heldout", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=4.0, help="CPU training minutes per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--choose", choices=("suggested", "first"), default="suggested",
                        help="which pool sections are corrected: the app's suggested order (stagetool rank) or by name")
    parser.add_argument("--no-refit-stager", dest="refit_stager", action="store_false",
                        help="keep the stager the models came with (before the refit on the new cell model's cells)")
    parser.add_argument("--seed", type=int, default=7000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stagescope-adaptation"))
    args = parser.parse_args()
    args.ks = [int(k) for k in args.ks.split(",") if k.strip() and int(k) > 0]
    args.starts = [s for s in args.starts.split(",") if s]
    args.scratch_ks = None if args.scratch_ks is None else [int(k) for k in args.scratch_ks.split(",") if k.strip()]
    args.kinds = [k for k in args.kinds.split(",") if k]
    import torch

    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for style in args.styles.split(","):
        bench_style(style, args, rows)
    print(f"\nadaptation on phantom styles ({args.size} px sections, {args.heldout} held out per style, "
          f"{args.minutes:g} CPU min per model trained ({', '.join(args.kinds)}; the others stay the demo's), "
          f"{args.threads} torch thread(s)); total {(time.monotonic() - started) / 60:.1f} min")
    print(HEADER)
    for row in rows:
        print(format_row(row))
    print("numbers on synthetic phantoms, which are easier than tissue")


if __name__ == "__main__":
    main()
