"""`stagescope brightfield ...`: nuclei from label-free brightfield z-planes.

    stagescope brightfield derive-labels FLUO --out LABELS.tif [--planes FIELD_DIR_OR_FILES ...]
    stagescope brightfield train PLANES... [LABELS] --out MODEL_DIR [--planes 2,3] [--test FIELD [LABELS]]
    stagescope brightfield segment FIELD... --out DIR [--model NAME_OR_DIR] [--fluo FILE]
    stagescope brightfield experiment planes|size FIELD FIELD... --out DIR [--epochs 10] [--phantom N]

A FIELD is a folder of plane files whose names carry the focus position (``...-Z1351.60.tif``),
optionally with a fluorescence image (``fl.tif``, ``*dapi*``) beside them; plane files or one
multi-page stack also work.  Options of each step are generated from the dataclasses in
app/pipelines/brightfield/params.py; an option left out keeps the default (or, for ``segment``,
the value stored in the model card).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from app.core.errors import UserError

EXIT_OK = 0
PHANTOM_MIN_AREA = 30  # phantom nuclei are far smaller than sephaCe's (whose default is 1000 px)


# ---------------------------------------------------------------- options from dataclasses


def add_options(parser: argparse.ArgumentParser, cls: type, key: str, skip: tuple[str, ...] = (),
                only: tuple[str, ...] = ()) -> None:
    """One ``--option`` per documented field of ``cls`` (app.cli.pipelines.add_options)."""
    from app.cli.pipelines import add_options as add

    add(parser, cls, key, skip, only, need_help=True)


def params_from(args: argparse.Namespace, cls: type, key: str, base: Any = None) -> Any:
    """The dataclass ``cls`` (or a copy of ``base``) with the options the user gave."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {name: value for dest, value in vars(args).items()
             if dest.startswith(key + "__") and (name := dest[len(key) + 2:]) in names and value is not None}
    return dataclasses.replace(base if base is not None else cls(), **given)


# ---------------------------------------------------------------- parser


def _inputs_and_out(parser: argparse.ArgumentParser, name: str, metavar: str, nargs: str | None, help: str,
                    out_metavar: str, out_help: str | None = None) -> None:
    """The input positional and the required ``--out`` that every brightfield action has."""
    parser.add_argument(name, type=Path, nargs=nargs, metavar=metavar, help=help)
    parser.add_argument("--out", type=Path, required=True, metavar=out_metavar, help=out_help)


def add_parser(subparsers: Any) -> None:
    """Register ``brightfield`` with derive-labels, train, segment and experiment planes|size."""
    from app.pipelines.brightfield.params import ExperimentParams, LabelParams, SegmentParams, TrainParams

    parser = subparsers.add_parser("brightfield", help="nuclei from brightfield z-planes (U-Net trained on fluorescence labels)")
    sub = parser.add_subparsers(dest="brightfield_command", metavar="ACTION", required=True)

    p = sub.add_parser("derive-labels", help="nuclei labels from a fluorescence (DNA stain) image, registered onto brightfield")
    _inputs_and_out(p, "fluo", "FLUO", None, "fluorescence (DNA stain) image of the field", "LABELS.tif")
    p.add_argument("--planes", dest="plane_paths", type=Path, nargs="+", default=None, metavar="PLANES",
                   help="brightfield planes of the field for the registration check "
                        "(default: the plane files beside FLUO, if any)")
    add_options(p, LabelParams, "label")
    p.set_defaults(func=cmd_derive_labels)

    p = sub.add_parser("train", help="train a U-Net on brightfield planes and nuclei labels")
    _inputs_and_out(p, "inputs", "PLANES", "+", "field folder, plane files or a stack file, then the label image; "
                    "without a label image the labels are derived from the fluorescence image in the field folder",
                    "MODEL_DIR")
    p.add_argument("--name", default=None, help="model name (default: the folder name)")
    p.add_argument("--also", type=Path, action="append", default=[], metavar="FIELD_DIR",
                   help="another training field folder (labels from its fluorescence image); repeatable")
    p.add_argument("--test", type=Path, nargs="+", default=None, metavar="FIELD [LABELS]",
                   help="held-out field to measure the model on; its scores go into card.json")
    p.add_argument("--fp32", action="store_true", help="store float32 weights (default: float16, half the size)")
    add_options(p, TrainParams, "train")
    add_options(p, LabelParams, "label", only=("sigma", "threshold", "min_area", "split_depth", "max_shift"))
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("segment", help="segment and count nuclei with a brightfield model (labels TIFF + CSV)")
    _inputs_and_out(p, "inputs", "FIELD", "+", "field folders, a folder of field folders, the plane files of one "
                    "field (names with Z<position>), or multi-page stack files (one field each)", "DIR")
    p.add_argument("--model", default=None, metavar="NAME_OR_DIR", help="default: the shipped brightfield-sephace")
    p.add_argument("--fluo", type=Path, default=None, metavar="FILE",
                   help="fluorescence image to measure per nucleus (default: fl.tif / *dapi* in each field folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo fields whose results exist, and replace nuclei.csv / counts.csv even when changed by hand")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_options(p, SegmentParams, "segment")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("experiment", help="measured answers: how many planes, how much training data")
    ex = p.add_subparsers(dest="experiment", metavar="KIND", required=True)
    for kind, text in (("planes", "error for each single plane, then for the best 1, 2, 3 ... planes"),
                       ("size", "error against the number of training crops or fields")):
        q = ex.add_parser(kind, help=text)
        _inputs_and_out(q, "fields", "FIELD", "*", "field folders with fluorescence; each is tested once, trained on "
                        "the others", "DIR", "table (.txt .csv .json) and plot (.png)")
        q.add_argument("--phantom", type=int, default=None, metavar="N",
                       help="use N synthetic 9-plane phantom fields instead of FIELDs")
        q.add_argument("--phantom-size", type=int, default=256, metavar="PX", help="side of each phantom field")
        q.add_argument("--quick", action="store_true", help="tiny budget (a smoke test, not a result)")
        add_options(q, ExperimentParams, "experiment")
        add_options(q, TrainParams, "train", only=("scale", "depth", "crop", "batch_size", "lr", "boundary", "threads", "device"))
        add_options(q, LabelParams, "label", only=("sigma", "threshold", "min_area", "split_depth", "max_shift"))
        q.set_defaults(func=cmd_experiment)


# ---------------------------------------------------------------- derive-labels


def cmd_derive_labels(args: argparse.Namespace) -> int:
    """Write LABELS.tif and LABELS.json (parameters, threshold, registration)."""
    from app.core.atomic import atomic_write_json
    from app.core.images import write_tiff
    from app.pipelines.brightfield.labels import derive_labels
    from app.pipelines.brightfield.params import LabelParams, to_dict
    from app.pipelines.brightfield.stack import field_files, load_stack, read_gray

    params = params_from(args, LabelParams, "label")
    fluo = read_gray(args.fluo)
    planes = None
    plane_paths = args.plane_paths
    if plane_paths is None:
        try:
            found, _ = field_files(args.fluo.parent)
        except UserError:
            found = []
        plane_paths = found if found and any(p != args.fluo for p in found) else None
        if plane_paths:
            print(f"registration checked against {len(plane_paths)} planes in {args.fluo.parent}")
    if plane_paths:
        planes = load_stack(plane_paths).data
    result = derive_labels(fluo, params, planes)
    out = Path(args.out)
    write_tiff(out, result.labels, axes="YX")
    side = out.with_name(out.name.split(".")[0] + ".json")
    atomic_write_json(side, {"fluorescence": str(args.fluo), "labels": str(out), "count": result.count,
                             "threshold": result.threshold, "params": to_dict(params),
                             "registration": result.registration.to_dict() if result.registration else None})
    print(f"{result.count} nuclei (threshold {result.threshold:.1f}) -> {out} (+ {side.name})")
    if result.registration is not None:
        reg = result.registration
        print(f"fluorescence/brightfield shift (dy, dx) = {reg.shift} px against plane {reg.plane}")
        for message in reg.messages:
            print(f"warning: {message}", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------- train


def _split_planes_labels(inputs: list[Path]) -> tuple[list[Path], Path | None]:
    """PLANES... [LABELS]: the last input is the label image when it is a file without a z position."""
    from app.pipelines.brightfield.stack import z_from_name

    if len(inputs) >= 2 and inputs[-1].is_file() and z_from_name(inputs[-1].name) is None:
        return inputs[:-1], inputs[-1]
    return inputs, None


def _segment_for(labels: Any) -> Any:
    """Segmentation defaults matching the label settings (same smallest nucleus, same splitting)."""
    from app.pipelines.brightfield.params import SegmentParams

    return SegmentParams(min_area=labels.min_area, split_depth=labels.split_depth)


def _load_field(inputs: list[Path], label_params: Any = None) -> Any:
    """A training field from PLANES [LABELS], saying where its labels came from."""
    from app.pipelines.brightfield.train import load_training_field

    planes, labels = _split_planes_labels(inputs)
    field_, derived = load_training_field(planes, labels, label_params)
    if derived is not None:
        reg = derived.registration
        shift = f", fluorescence shift {reg.shift} px" if reg is not None else ""
        print(f"{field_.name}: {derived.count} nuclei derived from the fluorescence image{shift}")
        for message in reg.messages if reg is not None else []:
            print(f"warning: {message}", file=sys.stderr)
    return field_


def cmd_train(args: argparse.Namespace) -> int:
    """Train, optionally score a held-out field, write MODEL_DIR (card.json + weights.pt)."""
    from app.core.jobs import ConsoleProgress, run
    from app.pipelines.brightfield.experiments import evaluate
    from app.pipelines.brightfield.params import LabelParams, TrainParams
    from app.pipelines.brightfield.predict import BrightfieldModel
    from app.pipelines.brightfield.train import save_trained, train

    params = params_from(args, TrainParams, "train")
    labels = params_from(args, LabelParams, "label")
    segment = _segment_for(labels)
    fields = [_load_field(list(args.inputs), labels)] + [_load_field([p], labels) for p in args.also]
    progress = ConsoleProgress()
    result = run(train(fields, params, checkpoint_dir=args.out), progress)
    print(f"trained {result.seconds:.0f} s, {len(result.history)} epochs ({result.stopped}); best epoch {result.best_epoch}")
    metrics = {}
    if args.test:
        test = _load_field(list(args.test), labels)
        scores = run(evaluate(BrightfieldModel.from_result(result), test, segment), progress)
        metrics["held_out"] = {"data": f"{test.name} (not used in training or validation)", **scores}
        print(f"held-out {test.name}: object F1 {scores['object_f1']:.3f} (IoU 0.5)  pixel F1 {scores['pixel_f1']:.3f}  "
              f"AUROC {scores['auroc']:.3f}  nuclei {scores['n_true']} true / {scores['n_pred']} found")
    card = save_trained(result, args.out, args.name or Path(args.out).name, metrics, segment=segment,
                        data=", ".join(f.name for f in fields), half=not args.fp32)
    print(f"model written to {card.folder}")
    return EXIT_OK


# ---------------------------------------------------------------- segment


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment each field into DIR/<field>/ (labels.tif, nuclei.csv, objects.json); nuclei.csv and counts.csv
    over all fields; run.json and the batch summary (the runner's layout, as project runs and batches)."""
    from app.cli.pipelines import analyze_and_tell, given_options, item_rows, print_result
    from app.pipelines.brightfield.predict import collect_fields
    from app.pipelines.contract import Item

    params = given_options(args, "segment")
    items = [Item(f.name, tuple(str(Path(p).resolve()) for p in f.planes),
                  {"fluorescence": str(Path(f.fluo).resolve())} if f.fluo else {})
             for f in collect_fields(list(args.inputs), args.fluo)]
    result = analyze_and_tell("brightfield", items, args.out, {"brightfield": args.model} if args.model else None,
                              params, force=args.overwrite, as_json=args.json, force_option="--overwrite")
    if args.json:
        return print_result(result, True)
    for row in item_rows(result):
        note = " (done before, skipped)" if row["status"] == "skipped" else f" in {row['seconds'] or 0:.2f} s"
        print(f"{row['name']}: {row.get('count')} nuclei{note}")
    print(f"results in {args.out} (a folder per field with labels.tif, nuclei.csv and objects.json; nuclei.csv, "
          "counts.csv, run.json)")
    return EXIT_OK


# ---------------------------------------------------------------- experiments


def cmd_experiment(args: argparse.Namespace) -> int:
    """Run an experiment, print its table, write table + plot into --out."""
    from app.core.jobs import ConsoleProgress, run
    from app.core.outputs import collect_kept
    from app.pipelines.brightfield.experiments import experiment_planes, experiment_size, phantom_fields
    from app.pipelines.brightfield.params import ExperimentParams, LabelParams, TrainParams

    params = params_from(args, ExperimentParams, "experiment")
    base = params_from(args, TrainParams, "train")
    labels = params_from(args, LabelParams, "label")
    if args.quick:
        params = dataclasses.replace(params, epochs=2, steps_per_epoch=3, budget_s=5.0, sizes=params.sizes[:2])
        base = dataclasses.replace(base, crop=min(base.crop, 64), batch_size=min(base.batch_size, 4))
    if args.phantom is not None:
        if args.fields:
            raise UserError("give FIELD folders or --phantom N, not both")
        fields = phantom_fields(args.phantom, size=args.phantom_size)
        base = dataclasses.replace(base, scale=1.0 if args.train__scale is None else base.scale)
        if args.label__min_area is None:
            labels = dataclasses.replace(labels, min_area=PHANTOM_MIN_AREA)
    else:
        if len(args.fields) < 2:
            raise UserError("give at least two FIELD folders (one to train on, one to test on), or --phantom N")
        fields = [_load_field([p], labels) for p in args.fields]
    job = experiment_planes if args.experiment == "planes" else experiment_size
    table = run(job(fields, params, base, _segment_for(labels)), ConsoleProgress())
    if args.quick:
        table.notes.append("--quick: a smoke test with a tiny budget, not a result")
    with collect_kept() as kept:
        paths = table.write(args.out, args.experiment)
    print(table.to_text())
    print(f"written: {', '.join(str(p) for p in paths)}")
    for item in kept:
        print(f"{item.message()} (with its .txt, .json and .png)")
    return EXIT_OK
