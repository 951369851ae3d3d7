"""The `stagescope` command line: every action the GUI offers, for scripts and overnight batches.

Each sub-command is a small handler returning an exit code.  A :class:`UserError` (bad input the
user can fix) prints one line on stderr and exits 2, never a traceback.  Each registered pipeline
gets its command group from app/cli/pipelines.py (its own `app/cli/<pipeline>.py` module, or the
generic ``analyze`` built from its params dataclass).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app import __version__
from app.cli.common import EXIT_OK, EXIT_USER_ERROR, print_json
from app.core.errors import UserError, os_error_message



# ---------------------------------------------------------------- info


def cmd_info(args: argparse.Namespace) -> int:
    from app.core.images import open_image

    rows = []
    for path in args.images:
        with open_image(path) as image:
            rows.append(image.info.to_dict())
    if args.json:
        print_json(rows[0] if len(rows) == 1 else rows)
        return EXIT_OK
    for info in rows:
        size = info.get("pixel_size_um")
        print(f"{info['path']}")
        print(f"  format      {info['format']}")
        print(f"  shape       {tuple(info['shape'])}  axes {info['axes']}  dtype {info['dtype']}")
        print(f"  channels    {info['n_channels']}: {', '.join(info['channel_names'])}")
        print(f"  z-planes    {info['n_planes']}")
        print(f"  pixel size  {f'{size:.4g} um' if size else 'unknown'}")
        if len(info.get("levels", [])) > 1:
            print(f"  pyramid     {len(info['levels'])} levels: {info['levels']}")
        if len(info.get("scenes", [])) > 1:
            print(f"  scenes      {len(info['scenes'])}: {', '.join(info['scenes'])} (open one as FILE#scene-N)")
    return EXIT_OK


# ---------------------------------------------------------------- evaluate


def _paired_files(truth: Path, pred: Path) -> list[tuple[Path, Path]]:
    """Pair label images by image name (app.core.formats.image_stem) when given folders, or the two files."""
    from app.core.formats import image_stem
    from app.core.images import list_images

    truth_files = list_images(truth)
    by_folder = _result_labels(pred) if pred.is_dir() else {}
    pred_files = list(by_folder.values()) or list_images(pred)
    if not truth.is_dir() and not pred.is_dir():
        return [(truth_files[0], pred_files[0])]
    if truth.is_dir() != pred.is_dir():
        raise UserError("give two files or two folders (matched by file name), not one of each")
    by_stem = by_folder or {image_stem(p): p for p in pred_files}
    missing = [t.name for t in truth_files if image_stem(t) not in by_stem]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserError(f"{pred}: no prediction for {len(missing)} truth image(s): {shown}")
    return [(t, by_stem[image_stem(t)]) for t in truth_files]


def _result_labels(folder: Path) -> dict[str, Path]:
    """A pipeline's results folder (``<out>/<image>/`` as ``kaizen segment`` or ``analyze`` write it): image -> labels.

    Each item folder's label image is the one its pipeline names as ``labels`` output; empty when
    ``folder`` is not such a results folder (then its image files are the predictions).
    """
    items = sorted(p for p in folder.iterdir() if p.is_dir())
    if not items:  # a folder of label images: no pipeline needs importing
        return {}
    from app.pipelines import registry

    names = list(dict.fromkeys(spec.output_names.get("labels", "labels.tif")  # run.json's "labels" key
                               for spec in registry.pipelines().values()))
    found = {}
    for item in items:
        label = next((item / n for n in names if (item / n).is_file()), None)
        if label is not None:
            found[item.name] = label
    return found


def _read_labels(path: Path):
    from app.core.images import label_ids, open_image

    with open_image(path) as image:
        labels = image.read(finite=False)  # NaN ids are reported by label_ids as ids, not as pixels
    if labels.ndim != 2:
        raise UserError(f"{path}: a label image must be 2-D, this one has shape {labels.shape}")
    return label_ids(labels, path)


def _check_same_shape(a, b, path_a: Path, path_b: Path) -> None:
    if a.shape != b.shape:
        raise UserError(f"{path_b}: shape {b.shape} differs from {path_a}: {a.shape}")


def cmd_evaluate_instances(args: argparse.Namespace) -> int:
    from app.core.metrics import instance_scores

    pairs = []
    for truth_path, pred_path in _paired_files(args.truth, args.pred):
        truth, pred = _read_labels(truth_path), _read_labels(pred_path)
        _check_same_shape(truth, pred, truth_path, pred_path)
        pairs.append((truth, pred))
    scores = instance_scores(pairs)
    if args.json:
        print_json(scores)
        return EXIT_OK
    print(f"images: {scores['n_images']}")
    print("  ".join(f"{key} {scores[key]:.4f}" for key in ("AP50", "AP60", "AP70", "AP80", "AP90")))
    print(f"at IoU 0.5: precision {scores['precision']:.4f}  recall {scores['recall']:.4f}  F1 {scores['f1']:.4f}")
    return EXIT_OK


def cmd_evaluate_semantic(args: argparse.Namespace) -> int:
    import numpy as np

    from app.core.metrics import check_class_count, confusion_matrix, out_of_range_values, semantic_scores

    try:
        check_class_count(args.classes)
    except ValueError as error:
        raise UserError(f"--classes: {error}") from error
    confusion = np.zeros((args.classes, args.classes), dtype=np.int64)
    pairs = _paired_files(args.truth, args.pred)
    for truth_path, pred_path in pairs:
        truth, pred = _read_labels(truth_path), _read_labels(pred_path)
        _check_same_shape(truth, pred, truth_path, pred_path)
        for path, classes, ignore in ((truth_path, truth, args.ignore), (pred_path, pred, None)):
            bad = out_of_range_values(classes, args.classes, ignore)
            if bad:
                raise UserError(f"{path}: class values must lie in 0..{args.classes - 1}, found "
                                f"{', '.join(map(str, bad))}; raise --classes"
                                + (", or give --ignore VALUE for truth pixels not to score" if ignore is None and
                                   path == truth_path else ""))
        if args.ignore is not None:
            keep = truth != args.ignore
            truth, pred = truth[keep], pred[keep]
        confusion += confusion_matrix(truth, pred, args.classes)
    scores = semantic_scores(confusion)
    scores["n_images"] = len(pairs)
    if args.json:
        print_json(scores)
        return EXIT_OK
    print(f"images: {len(pairs)}  classes: {args.classes}")
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
        print(f"  {key:15s} {scores[key]:.4f}")
    return EXIT_OK


# ---------------------------------------------------------------- phantom


def cmd_phantom(args: argparse.Namespace) -> int:
    from app.pipelines.phantoms import write_phantom

    markers = tuple(m.strip() for m in args.markers.split(",") if m.strip()) if args.markers is not None else None
    written = write_phantom(args.kind, args.out, seed=args.seed, count=args.count, size=args.size, markers=markers,
                            style=args.style)
    files = [str(p) for p in written] if written else sorted(str(p) for p in Path(args.out).iterdir())
    print(f"wrote {len(files)} files to {args.out} (see README.txt there for what was drawn)")
    return EXIT_OK


# ---------------------------------------------------------------- project


def cmd_project_new(args: argparse.Namespace) -> int:
    from app.core.project import Project

    project = Project.create(args.folder, name=args.name or Path(args.folder).name)
    print(f"created project '{project.name}' in {project.root}")
    return EXIT_OK


def cmd_project_add(args: argparse.Namespace) -> int:
    from app.core.images import list_images
    from app.core.project import Project

    project = Project.open(args.folder)
    for path in args.images:
        for file in list_images(path):
            entry = project.add_image(file, mode="copy" if args.copy else "link", group=args.group)
            print(f"added {_entry_name(entry)}")
    return EXIT_OK


def _entry_name(entry: Any) -> str:
    return entry["name"] if isinstance(entry, dict) else getattr(entry, "name", str(entry))


def cmd_project_list(args: argparse.Namespace) -> int:
    from app.core.project import Project

    project = Project.open(args.folder)
    images = [_as_dict(e) for e in project.images()]
    runs = [_as_dict(r) for r in project.runs()]
    reports = [str(p) for p in project.reports()]
    if args.json:
        print_json({"name": project.name, "root": str(project.root), "images": images, "runs": runs, "reports": reports})
        return EXIT_OK
    print(f"project '{project.name}' at {project.root}")
    print(f"images ({len(images)}):")
    for image in images:
        group = f"  [{image['group']}]" if image.get("group") else ""
        print(f"  {image['name']}  ({image.get('mode', '')}) {', '.join(image.get('channels') or [])}{group}")
    print(f"runs ({len(runs)}):")
    for run in runs:
        print(f"  {run.get('id')}  {run.get('pipeline')}  {run.get('status')}")
    print(f"reports ({len(reports)}):")
    for report in reports:
        print(f"  {report}")
    return EXIT_OK


def cmd_project_relink(args: argparse.Namespace) -> int:
    from app.core.project import Project
    from app.core.project_edit import missing_images, relink

    project = Project.open(args.folder)
    if not missing_images(project):
        print("no image is missing; nothing to relink")
        return EXIT_OK
    result = relink(project, args.location, image=args.image)
    if args.json:
        print_json({"relinked": {k: str(v) for k, v in result.relinked.items()}, "missing": result.missing})
    else:
        for name, path in result.relinked.items():
            print(f"relinked {name} -> {path}")
        if result.missing:
            print(f"still missing ({len(result.missing)}): {', '.join(result.missing)}")
    if not result.relinked:
        raise UserError(f"none of the {len(result.missing)} missing images was found from {args.location}")
    return EXIT_OK


def cmd_project_set(args: argparse.Namespace) -> int:
    from app.core.project import Project
    from app.core.project_edit import set_image_metadata

    project = Project.open(args.folder)
    entry = set_image_metadata(project, args.image, pixel_size_um=args.pixel_size, channels=args.channels)
    size = f"{entry.pixel_size_um} µm" if entry.pixel_size_um else "unknown"
    print(f"{entry.name}: pixel size {size}; channels {', '.join(entry.channels) or 'unnamed'}")
    return EXIT_OK


def _as_dict(item: Any) -> dict:
    if isinstance(item, dict):
        return item
    if hasattr(item, "to_dict"):
        return item.to_dict()
    import dataclasses

    if dataclasses.is_dataclass(item):
        return dataclasses.asdict(item)
    return dict(vars(item))


# ---------------------------------------------------------------- demo and gui


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    return run_demo(args.out, force=args.force)


def cmd_gui(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("app.gui") is None:
        raise UserError("the desktop application is not part of this build yet; use the sub-commands (stagescope --help)")
    from app.gui.main import main as gui_main

    return gui_main(args)


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; pipelines add theirs through ``add_parser``."""
    parser = argparse.ArgumentParser(prog="stagescope", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"stagescope {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library warnings with errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="shape, axes, channels, planes and pixel size of images")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("evaluate", help="compare predictions with ground truth")
    ev = p.add_subparsers(dest="what", metavar="KIND", required=True)
    q = ev.add_parser("instances", help="instance AP at IoU 0.5..0.9 of label images (files or folders)")
    q.add_argument("truth", type=Path, metavar="TRUTH")
    q.add_argument("pred", type=Path, metavar="PRED")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_evaluate_instances)
    q = ev.add_parser("semantic", help="pixel accuracy, mean accuracy, mIoU, fw-IoU of class maps")
    q.add_argument("truth", type=Path, metavar="TRUTH")
    q.add_argument("pred", type=Path, metavar="PRED")
    q.add_argument("--classes", type=int, required=True, metavar="N",
                   help="number of classes incl. background 0 (at least 2); every value must lie in 0..N-1")
    q.add_argument("--ignore", type=int, default=None, metavar="VALUE",
                   help="truth value of pixels not to score (e.g. 255); other values outside 0..N-1 are refused")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_evaluate_semantic)

    p = sub.add_parser("phantom", help="synthetic images with exact ground truth")
    p.add_argument("kind", choices=("nuclei", "brightfield", "testis"))
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--seed", type=int, default=0, metavar="N")
    p.add_argument("--count", type=int, default=None, metavar="K", help="images to write (default depends on kind)")
    p.add_argument("--size", type=int, default=None, metavar="PX", help="image side in pixels")
    p.add_argument("--markers", default=None, metavar="SOX9,SCP3",
                   help="testis only: antibody channels after DAPI, comma separated (default SOX9; '' for none)")
    p.add_argument("--style", default=None, metavar="NAME",
                   help="testis only: sections as another lab would image them: default (the demo models' training "
                        "phantoms), widefield (0.65 um pixels, soft focus, vignetting, dim stain, debris) or "
                        "cryosection (0.4 um pixels, oblique cuts, folds and tears, many interstitial cells)")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("project", help="create, fill and list project folders")
    pr = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = pr.add_parser("new", help="create an empty project folder")
    q.add_argument("folder", type=Path, metavar="DIR")
    q.add_argument("--name", default=None)
    q.set_defaults(func=cmd_project_new)
    q = pr.add_parser("add", help="add images (linked by default; raw files are never written)")
    q.add_argument("folder", type=Path, metavar="DIR")
    q.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_DIR")
    q.add_argument("--copy", action="store_true", help="copy into the project instead of linking")
    q.add_argument("--group", default=None, help="group name, e.g. a condition or animal")
    q.set_defaults(func=cmd_project_add)
    q = pr.add_parser("list", help="images, runs and reports of a project")
    q.add_argument("folder", type=Path, metavar="DIR")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_project_list)
    q = pr.add_parser("relink", help="point images whose raw files moved at their new place")
    q.add_argument("folder", type=Path, metavar="PROJECT")
    q.add_argument("location", type=Path, metavar="NEW_ROOT_OR_FILE",
                   help="the folder the raw data moved to, or the new file of one missing image")
    q.add_argument("--image", default=None, metavar="NAME", help="which missing image the file is")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_project_relink)
    q = pr.add_parser("set", help="pixel size and channel names of an image whose file lacks them")
    q.add_argument("folder", type=Path, metavar="PROJECT")
    q.add_argument("image", metavar="IMAGE", help="image name in the project")
    q.add_argument("--pixel-size", type=float, default=None, metavar="UM", help="micrometres per pixel, e.g. 0.5")
    q.add_argument("--channels", default=None, metavar="DAPI,SOX9", help="channel names in file order")
    q.set_defaults(func=cmd_project_set)

    p = sub.add_parser("demo", help="build the sample project from phantoms and run what exists on it")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="where (default: your Stagescope data folder)")
    p.add_argument("--force", action="store_true", help="rebuild the sample project from scratch")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("gui", help="open the desktop application")
    p.add_argument("project", nargs="?", type=Path, default=None, metavar="PROJECT")
    p.add_argument("--screenshot", type=Path, default=None, metavar="FILE")
    p.add_argument("--image", default=None, metavar="NAME")
    p.set_defaults(func=cmd_gui)

    from app.cli.batch import add_parser as add_batch
    from app.cli.export import add_parser as add_export
    from app.cli.pipelines import add_parsers

    add_parsers(sub)  # one command group per registered pipeline (app.pipelines.registry)
    add_batch(sub)
    add_export(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code.

    Errors the user can fix (a :class:`UserError`, or a full disk, a read-only folder or a denied
    permission) end as one line on stderr and exit 2; ``--debug`` adds the traceback and shows the
    warnings of the image libraries, which are otherwise kept off the terminal.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    quiet_libraries(debug)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or EXIT_OK)
    except UserError as error:
        return _fail(str(error), debug)
    except BrokenPipeError:  # `stagescope info ... | head` closed the pipe: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so Python's exit flush does not raise again
        return EXIT_OK
    except OSError as error:
        message = os_error_message(error)
        if message is None:
            raise
        return _fail(message, debug)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("stagescope: interrupted", file=sys.stderr)
        return 130


def _fail(message: str, debug: bool) -> int:
    """Print a user error as one line (with the traceback first under --debug); the exit code 2."""
    if debug:
        traceback.print_exc()
    print(f"stagescope: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def quiet_libraries(debug: bool = False) -> None:
    """Keep the image libraries' warnings (tifffile's tag complaints, zarr's abandoned decode tasks) off stderr.

    They are not the user's business when a one-line error follows and would bury it; ``--debug``
    shows them at WARNING level instead.
    """
    if debug:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
        return
    for name in ("tifffile", "asyncio", "zarr", "imagecodecs"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())
        logger.propagate = False
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    if getattr(sys.unraisablehook, "stagescope_quiet", False):
        return
    default_hook = sys.unraisablehook

    def unraisable(info: Any) -> None:  # a decode task zarr left behind, failing as its file closes
        if "zarr" in repr(getattr(info, "object", "")) or "zarr" in "".join(traceback.format_tb(info.exc_traceback)):
            return
        default_hook(info)

    unraisable.stagescope_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = unraisable


if __name__ == "__main__":
    sys.exit(main())
