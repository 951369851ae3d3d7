"""`stagescope kaizen train|segment`: train a Kaizen VQ-VAE on labelled images, decompose images with one.

Train: ``stagescope kaizen train IMAGES LABELS --out MODEL_DIR [--patch 40] [--epochs N] [--device auto]
[--channel C] [--z N]``;
label images are paired with images by file stem; a fixed hash rule holds out ``--val-percent``
of them for the validation loss.  Segment: ``stagescope kaizen segment IMAGE_OR_DIR --out DIR
[--model NAME_OR_DIR] [--diameter PX] [--force] [--json]`` writes per image ``DIR/<image>/``:
``kaizen.tif`` (labels), ``kaizen.objects.npz`` (overlapping object images), ``kaizen.objects.json``
and ``objects.json`` (the layout of project runs and batches: app.pipelines.runner), plus ``run.json``
and the batch summary; a rerun skips images done with the same inputs, model and parameters.
Decomposition options are generated from :class:`DecomposeParams`; unset ones take the model's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from app.core.device import use_threads
from app.core.errors import UserError
from app.pipelines.kaizen.params import TrainParams

EXIT_OK = 0
# DecomposeParams fields that get an option (help from the field's metadata); diameter and device have their own
PARAM_OPTIONS = ("accept_margin", "min_residual", "error_rounds", "max_candidates", "max_iterations", "mask_rule",
                 "mask_fraction", "min_area", "background", "scales", "switch_share", "merge_guard", "object_cost",
                 "min_peak", "min_head_agreement", "min_contrast", "min_snr", "batch_size")
DEVICE_HELP = "auto, cpu or cuda[:N] (Kaizen does not run on mps)"


def add_parser(subparsers: Any) -> None:
    """Register ``kaizen train`` and ``kaizen segment`` on the top-level sub-parsers."""
    parser = subparsers.add_parser("kaizen", help="decompose fluorescence images into objects (Kaizen VQ-VAE)")
    sub = parser.add_subparsers(dest="kaizen_command", metavar="ACTION", required=True)

    p = sub.add_parser("train", help="train a Kaizen model on instance-labelled images")
    p.add_argument("images", type=Path, metavar="IMAGES", help="image file or folder")
    p.add_argument("labels", type=Path, metavar="LABELS", help="label image file or folder (same file stems)")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR")
    defaults = TrainParams()  # one set of defaults for the CLI, the training wizard and scripts
    p.add_argument("--patch", type=int, default=defaults.patch, metavar="N",
                   help="patch side: 40 for nuclei, 120 for whole cells")
    p.add_argument("--epochs", type=int, default=defaults.epochs, metavar="N")
    p.add_argument("--steps-per-epoch", type=int, default=defaults.steps_per_epoch, metavar="N")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, metavar="N")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--channel", default=None, metavar="C", help="channel name or index of multi-channel images")
    p.add_argument("--z", type=int, default=None, metavar="N", help="z-plane of stacks")
    p.add_argument("--val-percent", type=int, default=20, metavar="P",
                   help="share of images held out for validation by a fixed hash of the file name")
    p.add_argument("--time-limit", type=float, default=0.0, metavar="S", help="stop after S seconds (0 = none)")
    p.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in MODEL_DIR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch (default: torch's)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("segment", help="decompose images into objects with a Kaizen model")
    p.add_argument("images", type=Path, metavar="IMAGE_OR_DIR")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--model", default=None, metavar="NAME_OR_DIR", help="default: the shipped kaizen-nuclei")
    p.add_argument("--diameter", type=float, default=None, metavar="PX",
                   help="typical object diameter in pixels (default: estimated per image)")
    p.add_argument("--channel", default=None, metavar="C", help="channel name or index of a multi-channel image")
    p.add_argument("--z", type=int, default=None, metavar="N", help="z-plane of a stack")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch (default: torch's)")
    p.add_argument("--force", action="store_true", help="decompose again images that are already done")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    _add_param_options(p)
    p.set_defaults(func=cmd_segment)


def _add_param_options(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per DecomposeParams field (default None = the model's value)."""
    from app.pipelines.kaizen.params import DecomposeParams

    defaults = DecomposeParams()
    for f in dataclasses.fields(DecomposeParams):
        if f.name not in PARAM_OPTIONS:
            continue
        value = getattr(defaults, f.name)
        kind = type(value) if value is not None else float
        kwargs: dict[str, Any] = {"type": kind, "default": None, "help": f.metadata["help"],
                                  "metavar": {int: "N", float: "X", str: "TEXT"}.get(kind, "NAME")}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
            kwargs.pop("metavar")
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f"param_{f.name}", **kwargs)


def _set_threads(threads: int | None) -> None:
    """Limit torch's CPU threads (on a busy shared machine one thread is often faster than two)."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, not {threads}")
    use_threads(threads)


def _channel(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


# ---------------------------------------------------------------- train


def _pairs(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    """(image, label) files matched by stem; an image without a label file is a user error."""
    from app.core.images import list_images

    image_files, label_files = list_images(images), list_images(labels)
    if not images.is_dir() and not labels.is_dir():
        return [(image_files[0], label_files[0])]
    by_stem = {_stem(p): p for p in label_files}
    missing = [p.name for p in image_files if _stem(p) not in by_stem]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserError(f"{labels}: no label image for {len(missing)} image(s): {shown}")
    return [(p, by_stem[_stem(p)]) for p in image_files]


def _stem(path: Path) -> str:
    """The image's name, as the project and the batch name it (app.core.formats.image_stem)."""
    from app.core.formats import image_stem

    return image_stem(path)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model folder (resuming a checkpoint there unless --no-resume)."""
    import numpy as np

    from app.core.images import label_ids
    from app.core.jobs import ConsoleProgress, run
    from app.pipelines.kaizen.decompose import read_gray
    from app.pipelines.kaizen.train import SPLIT_RULE, is_validation

    _set_threads(args.threads)
    if args.patch < 8 or args.patch % 8:
        raise UserError(f"--patch must be a multiple of 8 and at least 8, not {args.patch}")
    train, val = [], []
    for image_path, label_path in _pairs(args.images, args.labels):
        image = read_gray(image_path, channel=_channel(args.channel), z=args.z)
        labels = label_ids(read_gray(label_path, labels=True), label_path).astype(np.int32)
        if labels.shape != image.shape:
            raise UserError(f"{label_path}: label image size {labels.shape[1]}x{labels.shape[0]} does not match "
                            f"image {image_path} size {image.shape[1]}x{image.shape[0]} (width x height)")
        item = (_stem(image_path), image, labels)
        (val if args.val_percent > 0 and is_validation(item[0], args.val_percent) else train).append(item)
    if not train:
        raise UserError("no training images left after the validation split; lower --val-percent")
    if not any(labels.any() for _, _, labels in train):
        raise UserError(f"{args.labels}: the label images of the training split hold no objects (all 0); "
                        "Kaizen learns from labelled objects")
    params = TrainParams(patch=args.patch, target_diameter=0.4 * args.patch, epochs=args.epochs,
                         steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, device=args.device,
                         seed=args.seed, time_limit_s=args.time_limit)
    info = {"data": f"{args.images} + {args.labels}", "split_rule": SPLIT_RULE.replace("< 20", f"< {args.val_percent}"),
            "train_images_total": len(train), "validation_images_total": len(val)}
    from app.pipelines.kaizen.train import train_job

    started = time.perf_counter()
    out = run(train_job(train, val, args.out, params, resume=not args.no_resume, data_info=info), ConsoleProgress())
    print(f"model written to {out} in {time.perf_counter() - started:.0f} s")
    return EXIT_OK


# ---------------------------------------------------------------- segment


def cmd_segment(args: argparse.Namespace) -> int:
    """Decompose each image into ``DIR/<image>/`` (the runner's layout, as project runs and batches write it)."""
    from app.cli.pipelines import analyze_and_tell, item_rows, print_result

    _set_threads(args.threads)
    overrides = {k[len("param_"):]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}
    if args.diameter is not None:
        if args.diameter <= 0:
            raise UserError(f"--diameter must be positive, not {args.diameter}")
        overrides["diameter"] = args.diameter
    overrides.update({k: v for k, v in (("channel", args.channel), ("z", args.z)) if v is not None})
    if args.device != "auto":
        overrides["device"] = args.device
    result = analyze_and_tell("kaizen", [args.images], args.out, {"kaizen": args.model} if args.model else None,
                              overrides, force=args.force, as_json=args.json)
    if args.json:
        return print_result(result, True)
    for row in item_rows(result):
        diameter = f"{row['diameter']:.1f}" if row.get("diameter") else "-"
        print(f"{row['name']}: {row.get('count')} objects (diameter {diameter} px) -> {row['folder']}")
    return print_result(result, False)
