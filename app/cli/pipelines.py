"""`stagescope <pipeline> ...`: each registered pipeline's commands, and the one way they analyse a folder.

A pipeline with its own command module (``app/cli/<name>.py``, ``add_parser(subparsers)``) adds its
commands; every other registered pipeline gets ``stagescope <name> analyze INPUT... --out DIR``
with one option per field of its params dataclass (dataclass -> argparse, as the GUI's form).
Every analysing command runs :func:`analyze_folder`: the batch job run here (app.batch), so a CLI
run, a Dask batch and a project run write the same ``DIR/<item>/`` folders through the pipeline's
``analyze_one``, skip what is done with the same inputs, models and parameters, and go on past a
failing item (reported at the end: one line, exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import sys
import typing
from pathlib import Path
from typing import Any

from app.cli.common import parse_pairs, print_json
from app.core.errors import UserError
from app.core.outputs import collect_kept
from app.core.params import RENAMED

EXIT_OK = 0


def add_parsers(subparsers: Any) -> None:
    """One command group per registered pipeline (its own module's, else the generic ``analyze``)."""
    from app.pipelines.registry import pipelines

    for name, spec in pipelines(hidden=False).items():
        module = f"app.cli.{name}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).add_parser(subparsers)
        elif spec.analyze_one is not None:
            add_generic(subparsers, spec)


def add_generic(subparsers: Any, spec: Any) -> None:
    """``<name> analyze INPUT... --out DIR [--model KIND=NAME_OR_DIR] [--force] [--json]`` + params options."""
    parser = subparsers.add_parser(spec.name, help=spec.title, description=spec.description)
    sub = parser.add_subparsers(dest=f"{spec.name}_command", metavar="ACTION", required=True)
    p = sub.add_parser("analyze", help=f"run {spec.name} on images, one result folder per image")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--model", action="append", default=[], metavar="KIND=NAME_OR_DIR",
                   help=f"models: {', '.join(spec.models) or 'none'} (default: the shipped ones)")
    p.add_argument("--force", action="store_true", help="analyse again images that are already done")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_options(p, spec.params, "param")
    p.set_defaults(func=_generic_analyze, pipeline=spec.name)


def _generic_analyze(args: argparse.Namespace) -> int:
    result = analyze_and_tell(args.pipeline, args.inputs, args.out, parse_pairs(args.model, "--model", as_json=False),
                              given_options(args, "param"), force=args.force, as_json=args.json)
    return print_result(result, args.json)


# ---------------------------------------------------------------- dataclass -> argparse


def _int_tuple(text: str) -> tuple[int, ...]:
    """'2,3' -> (2, 3)."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


def add_options(parser: argparse.ArgumentParser, cls: type, key: str, skip: tuple[str, ...] = (),
                only: tuple[str, ...] = (), need_help: bool = False) -> None:
    """One ``--option`` per init field of the params dataclass ``cls`` (default None = keep the default).

    Help comes from ``field(metadata={"help": ...})``; ``need_help`` leaves out fields without one.
    Choices come from ``metadata["choices"]``.
    """
    group = parser.add_argument_group(f"{cls.__name__} options")
    defaults = cls()
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a forward reference we cannot resolve: fall back to the text
        hints = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip or (only and f.name not in only) or (need_help and "help" not in f.metadata):
            continue
        default = getattr(defaults, f.name)
        kind = str(hints.get(f.name, f.type))
        text = f.metadata.get("help", f.name.replace("_", " "))
        if "default" not in text:
            text += f" (default: {_show(default)})"
        # the option of today's name, plus the one it had before names were unified (--max-epochs)
        flags = ["--" + name.replace("_", "-") for name in (f.name, *(old for old, new in RENAMED.items()
                                                                       if new == f.name))]
        dest = f"{key}__{f.name}"
        choices = f.metadata.get("choices")
        if kind.startswith(("bool", "<class 'bool'>")):
            group.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif "tuple" in kind:
            group.add_argument(*flags, dest=dest, type=_int_tuple, default=None, metavar="I,J", help=text)
        elif kind.startswith(("int", "<class 'int'>")):
            group.add_argument(*flags, dest=dest, type=int, default=None, metavar="N", help=text)
        elif kind.startswith(("float", "<class 'float'>")):
            group.add_argument(*flags, dest=dest, type=float, default=None, metavar="X", help=text)
        else:
            group.add_argument(*flags, dest=dest, default=None, choices=choices, help=text,
                               metavar=None if choices else f.name.upper())


def given_options(args: argparse.Namespace, key: str) -> dict[str, Any]:
    """The ``key`` options the user gave, by field name."""
    prefix = key + "__"
    return {dest[len(prefix):]: value for dest, value in vars(args).items()
            if dest.startswith(prefix) and value is not None}


# ---------------------------------------------------------------- the run


def analyze_folder(pipeline: str, inputs: Any, out: Path, models: dict[str, str] | None, params: dict[str, Any],
                   force: bool = False, quiet: bool = False, raise_failures: bool = True) -> dict[str, Any]:
    """Run ``pipeline`` over ``inputs`` (paths or items) into ``out`` here; failing items are reported at the end.

    Progress goes to stderr.  Returns the batch result (app.batch.runner.batch_job); raises UserError
    naming each failed item after the others were done (and recorded in run.json), unless
    ``raise_failures`` is False (the caller reports them: ``stagetool analyze`` exits 1).
    """
    from app.batch.progress import ProgressBar
    from app.batch.runner import run_batch

    result = run_batch(pipeline, inputs, out, models=models, params=params,
                       progress=ProgressBar(verbose=False), force=force)  # failures: reported once, at the end
    failed = [r for r in result["records"] if r["status"] == "failed"]
    if failed and raise_failures:
        listed = "; ".join(f"{r['image']}: {r.get('error')}" for r in failed)
        raise UserError(f"{len(failed)} of {len(result['records'])} item(s) failed ({listed}); the others are in {out}")
    return result


def analyze_and_tell(pipeline: str, inputs: Any, out: Path, models: dict[str, str] | None, params: dict[str, Any],
                     force: bool, as_json: bool, force_option: str = "--force") -> dict[str, Any]:
    """:func:`analyze_folder`, then tell where each new report went when the user's own was kept.

    Told on stderr with ``--json`` (stdout holds only the JSON), and also when some items failed.
    """
    with collect_kept() as kept:  # reports the user changed are kept (app.core.outputs, app.core.republish)
        try:
            return analyze_folder(pipeline, inputs, out, models, params, force=force, quiet=as_json)
        finally:
            for item in kept:
                print(f"{item.message()} ({force_option} replaces it)", file=sys.stderr if as_json else sys.stdout)


def item_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per item: its name, source, folder, status, seconds and the pipeline's statistics."""
    folder = Path(result["folder"])
    return [{"name": r["image"], "image": r.get("source"), "folder": str(folder / r["image"]),
             "status": r["status"], "seconds": r.get("seconds"), **(r.get("stats") or {})}
            for r in sorted(result["records"], key=lambda r: r["image"])]


def print_result(result: dict[str, Any], as_json: bool) -> int:
    """The per-item rows as JSON, or where things went."""
    rows = item_rows(result)
    if as_json:
        print_json(rows)
        return EXIT_OK
    counts = result["counts"]
    print(f"{counts['done']} done, {counts['skipped']} already done -> {result['folder']}")
    for key, path in result.get("outputs", {}).items():
        print(f"  {key}: {path}")
    sys.stdout.flush()
    return EXIT_OK
