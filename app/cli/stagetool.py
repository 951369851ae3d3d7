"""`stagescope stagetool ...`: train the two models, analyse whole sections, evaluate, export curated data.

    stagescope stagetool train tubules|cells ANNOTATIONS... --out MODEL_DIR [--backbone B] [--epochs N] [--device D]
    stagescope stagetool analyze SECTION... --out DIR [--tubule-model M] [--cell-model M]
                                 [--antibody NAME=CHANNEL[:T]]... [--tta off|full|adaptive] [--edits FILE] [--force]
    stagescope stagetool evaluate RESULTS_DIR TRUTH [--json] [--force]
    stagescope stagetool rank RESULTS_DIR [--json]
    stagescope stagetool export RESULTS_DIR --out DIR

Workbooks and CSV tables the user changed are never replaced silently: the new ones get versioned
names (``sec (2).xlsx``) and the command prints where, unless ``--force``.  Handlers return an exit code; bad input raises :class:`UserError` (printed on one line, exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.core.errors import UserError
from app.core.outputs import KeptReport, collect_kept

EXIT_OK = 0
EXIT_FAILED_SECTIONS = 1
# AnalyzeParams fields offered as `stagetool analyze` options (antibodies: the repeatable --antibody)
ANALYZE_OPTIONS = ("dapi", "stage_from", "tta", "device", "batch_size", "overlap", "cell_score", "single_score",
                   "tubule_score", "cell_tile", "tubule_tile", "threads")


def _progress() -> Any:
    from app.core.jobs import ConsoleProgress

    return ConsoleProgress()


# ------------------------------------------------------------------------------------ handlers


def cmd_train(args: argparse.Namespace) -> int:
    from app.core.jobs import run
    from app.pipelines.stagetool.params import TrainParams
    from app.pipelines.stagetool.train import train

    params = TrainParams(kind=args.kind, backbone=args.backbone, epochs=args.epochs, device=args.device)
    for key in ("crop_size", "downsample", "batch_size", "lr", "crops_per_epoch", "seed", "time_limit_s",
                "val_fraction", "threads", "val_crops", "init_from", "pretrained"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(params, key, value)
    params.validate()
    card = run(train(list(args.annotations), args.out, params, name=args.name, resume=args.resume,
                     confirm_download=_confirm(args.yes)), _progress())
    if args.kind == "cells":  # stages come from this model's cells: refit the stager on corrected runs
        from app.pipelines.stagetool.fitting import refit_from_paths

        refit = run(refit_from_paths(args.out, list(args.annotations), params.device, params.threads), _progress())
        if refit is not None:
            print(f"stager: {refit['data']}")
    print(f"model written to {args.out} ({card.training.get('pretraining')})")
    for split, values in card.metrics.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float))
        print(f"  {split}: {shown}")
    return EXIT_OK


def _confirm(yes: bool) -> Any:
    """How the CLI agrees to a download: --yes, else a question on a terminal, else no."""
    if yes:
        return lambda question: True
    if not sys.stdin.isatty():
        return None

    def ask(question: str) -> bool:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    return ask


def cmd_fit_stager(args: argparse.Namespace) -> int:
    from app.pipelines.stagetool.fitting import fit_into_model

    stager, accuracy = fit_into_model(list(args.truth), args.model, args.predictions)
    cells = "the cells found in them" if args.predictions else "their annotated cells"
    print(f"composition stager fitted on {stager.n_train} annotated tubules and {cells} (accuracy on them "
          f"{accuracy:.3f}, a training figure) and stored in {args.model}/card.json; evaluate it on held-out sections")
    return EXIT_OK


def cmd_analyze(args: argparse.Namespace) -> int:
    """Sections into DIR/<section>/ through the runner (as project runs and batches); exit 1 when some failed."""
    import dataclasses

    from app.cli.pipelines import analyze_folder, given_options
    from app.core.edits import edits_path, read_edits, write_edits
    from app.pipelines.contract import Item
    from app.pipelines.stagetool.batch import section_files
    from app.pipelines.stagetool.params import AnalyzeParams
    from app.pipelines.stagetool.predict import section_name

    given = given_options(args, "param")
    if args.antibody:
        given["antibodies"] = ",".join(args.antibody)
    params = dataclasses.replace(AnalyzeParams(), **given)
    params.validate()
    edits = None
    if args.edits is not None:
        if not args.edits.exists():
            raise UserError(f"{args.edits}: no such edits file")
        edits = read_edits(args.edits)
    sections = section_files(args.sections)
    if args.truth is not None:  # a truth that cannot be scored is refused before hours of analysis
        from app.pipelines.stagetool.evaluate import check_truth_for_sections

        check_truth_for_sections(args.truth, [(section_name(p), p) for p in sections])
    items = [Item(section_name(p), (str(Path(p).resolve()),), meta={"synthetic": True} if args.synthetic else {})
             for p in sections]
    if edits is not None:  # kept in the output folder, where the GUI keeps a run's edits and reruns find them
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_edits(edits_path(Path(args.out)), edits)
    values = {f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.init}
    models = {"tubules": args.tubule_model, "cells": args.cell_model}
    with collect_kept() as kept:
        result = analyze_folder("stagetool", items, args.out, models, values, force=args.force, quiet=True,
                                raise_failures=False)
        if args.truth is not None:
            from app.pipelines.stagetool.evaluate import evaluate_results

            evaluate_results(args.out, args.truth, args.force)
    counts = result["counts"]
    print(f"{counts['done'] + counts['skipped']} section(s) done in {args.out}"
          + (f" ({counts['skipped']} already analysed, reports rewritten)" if counts["skipped"] else ""))
    if result["outputs"].get("workbook"):
        print(f"  batch workbook: {result['outputs']['workbook']}")
    _print_kept(kept)
    for record in result["records"]:
        if record["status"] == "failed":
            print(f"  FAILED {record['image']}: {record.get('error')}")
    return EXIT_FAILED_SECTIONS if counts["failed"] else EXIT_OK


def _print_kept(kept: list[KeptReport]) -> None:
    """Tell the user which of their changed reports were kept and where each new one went."""
    for item in kept:
        print(f"  {item.message()} (--force replaces it)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from app.cli.common import print_json
    from app.pipelines.stagetool.evaluate import evaluate_results, format_evaluation

    with collect_kept() as kept:
        results = evaluate_results(args.results, args.truth, args.force)
    if args.json:
        print_json(results)
        for item in kept:  # stdout holds only the JSON
            print(item.message(), file=sys.stderr)
    else:
        for name, evaluation in results.items():
            print(f"== {name}")
            print(format_evaluation(evaluation))
        _print_kept(kept)
    return EXIT_OK


def cmd_rank(args: argparse.Namespace) -> int:
    from app.cli import print_json
    from app.pipelines.stagetool.uncertainty import format_ranking, rank_sections

    rows = rank_sections(args.results)
    if args.json:
        print_json(rows)
    else:
        print(format_ranking(rows))
        if rows:
            print(f"correct {rows[0]['section']} first, then down the list: each next section shows the most stages "
                  "the ones above it do not (as the models staged them), the most doubtful among equals "
                  "(score 0 = sure, 1 = guessing; corrected objects count as sure)")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from app.pipelines.stagetool.curation import export_results

    written = export_results(args.results, args.out)
    for path in written:
        print(f"wrote {path}")
    return EXIT_OK


# -------------------------------------------------------------------------------------- parser


def add_parser(subparsers: Any) -> None:
    """Add ``stagetool`` with train / analyze / evaluate / export to the main command tree."""
    from app.cli.pipelines import add_options
    from app.pipelines.stagetool.params import BACKBONES, AnalyzeParams

    p = subparsers.add_parser("stagetool", help="testis sections: tubule stages, cell types, antigen profiles",
                              description="Stagetool (Meikar, Majoral et al. 2023) on whole DAPI testis sections.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    q = sub.add_parser("train", help="train the tubule or cell model on annotations or phantom sections",
                       description="Train from random weights, fine-tune a model (--init-from) or start from "
                                   "torchvision's ImageNet/COCO weights (--pretrained). ANNOTATIONS: COCO JSON or "
                                   "QuPath GeoJSON files (e.g. `stagetool export` of corrected results), or folders "
                                   "written by `stagescope phantom testis`.")
    q.add_argument("kind", choices=("tubules", "cells"))
    q.add_argument("annotations", nargs="+", type=Path, metavar="ANNOTATIONS")
    q.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR")
    q.add_argument("--backbone", default="lite", choices=BACKBONES,
                   help="resnet50 / resnext101_32x8d are the paper's (GPU); lite for CPU (default)")
    q.add_argument("--epochs", type=int, default=20)
    q.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    q.add_argument("--crop-size", type=int, default=None, help="training crop side in model pixels (default 1024)")
    q.add_argument("--downsample", type=int, default=None, help="section pixels per model pixel (default 1)")
    q.add_argument("--batch-size", type=int, default=None)
    q.add_argument("--lr", type=float, default=None)
    q.add_argument("--crops-per-epoch", type=int, default=None)
    q.add_argument("--val-fraction", type=float, default=None)
    q.add_argument("--time-limit", dest="time_limit_s", type=float, default=None, metavar="SECONDS")
    q.add_argument("--seed", type=int, default=None)
    q.add_argument("--val-crops", type=int, default=None, help="validation crops per epoch")
    q.add_argument("--threads", dest="threads", type=int, default=None, help="CPU threads for torch")
    q.add_argument("--name", default=None, help="model name for the card (default: the folder name)")
    q.add_argument("--resume", action="store_true", help="continue from the checkpoint in MODEL_DIR")
    q.add_argument("--init-from", default=None, metavar="MODEL",
                   help="fine-tune this model (folder or name, e.g. stagetool-cells-demo or your last model; its "
                        "backbone and scale are kept; try --lr 2e-4); a model of the other kind starts the backbone")
    q.add_argument("--pretrained", default=None, metavar="imagenet|coco|FILE.pth",
                   help="start from torchvision's published weights (downloaded once into the torch cache after "
                        "you agree to the size) or a weights file you have")
    q.add_argument("--yes", action="store_true", help="agree to downloading pretrained weights without asking")
    q.set_defaults(func=cmd_train)

    q = sub.add_parser("analyze", help="whole sections -> tubules, cells, antigen profiles, Excel")
    q.add_argument("sections", nargs="+", type=Path, metavar="SECTION")
    q.add_argument("--out", type=Path, required=True, metavar="DIR")
    q.add_argument("--tubule-model", default=None, metavar="NAME_OR_DIR", help="default: the shipped stagetool-tubules-demo")
    q.add_argument("--cell-model", default=None, metavar="NAME_OR_DIR", help="default: the shipped stagetool-cells-demo")
    q.add_argument("--antibody", action="append", metavar="NAME=CHANNEL[:T]",
                   help="an antibody channel (repeatable); without T a threshold is suggested from the data")
    q.add_argument("--edits", type=Path, default=None, metavar="FILE",
                   help="curation edits (JSON) to apply; kept as DIR/edits.json for later reruns")
    q.add_argument("--force", action="store_true",
                   help="analyse again sections that are already done, and replace workbooks and tables changed "
                        "since Stagescope wrote them (default: keep them, new ones get versioned names)")
    q.add_argument("--truth", type=Path, default=None, metavar="TRUTH", help="ground truth: add an Evaluation sheet")
    q.add_argument("--synthetic", action="store_true", help="mark the input as synthetic data in the reports")
    # the analysis options: one per field of the params dataclass (help, choices and defaults from it)
    add_options(q, AnalyzeParams, "param", only=ANALYZE_OPTIONS)
    q.set_defaults(func=cmd_analyze)

    q = sub.add_parser("evaluate", help="compare results with ground truth (paper tables 2-4)")
    q.add_argument("results", type=Path, metavar="RESULTS_DIR")
    q.add_argument("truth", type=Path, metavar="TRUTH", help="truth file or folder (phantom truth JSON)")
    q.add_argument("--force", action="store_true",
                   help="replace workbooks and tables changed since Stagescope wrote them (default: keep them and "
                        "write the new ones under versioned names)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_evaluate)

    q = sub.add_parser("fit-stager", help="fit the tubule model's stager on annotated tubules and their cells",
                       description="Stage tubules from the cell types found in them (our addition to the paper): a "
                                   "logistic regression on cell-type shares, stored in the tubule model's card. "
                                   "TRUTH: truth JSON files or folders (tubules with stage and usable, cells with "
                                   "type, box and tubule id), as `stagescope phantom testis` writes them.")
    q.add_argument("truth", nargs="+", type=Path, metavar="TRUTH")
    q.add_argument("--model", type=Path, required=True, metavar="TUBULE_MODEL_DIR")
    q.add_argument("--predictions", type=Path, default=None, metavar="RESULTS_DIR",
                   help="fit on the cells the cell model found in the annotated sections (the results of "
                        "`stagescope stagetool analyze` on them; TRUTH then is their one truth folder) instead of "
                        "the annotated cells, so the stager learns the cell model's own mistakes")
    q.set_defaults(func=cmd_fit_stager)

    q = sub.add_parser("rank", help="which section to correct next: sections by uncertainty, most uncertain first",
                       description="Per section: stage margin of its tubules (gap between the two best stages) and "
                                   "the scores of its cells, as one score (0 = sure, 1 = guessing). Works on a run "
                                   "folder, a folder of runs or a whole project.")
    q.add_argument("results", type=Path, metavar="RESULTS_DIR")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_rank)

    q = sub.add_parser("export", help="curated results as COCO training annotations")
    q.add_argument("results", type=Path, metavar="RESULTS_DIR")
    q.add_argument("--out", type=Path, required=True, metavar="DIR")
    q.set_defaults(func=cmd_export)
