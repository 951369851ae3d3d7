"""`stagescope batch analyze PIPELINE INPUTS... --out DIR [--scheduler tcp://HOST:8786 | --cluster local:N|slurm[:N]|pbs[:N]]`.

One task per image (section, brightfield field) through one pipeline; without a scheduler option
the batch runs here, one image after another.  Results: ``DIR/<image>/`` per image (complete or
absent), ``run.json``, ``batch_report.json`` / ``batch_report.csv`` (per image the worker, device,
time and status) and, for Stagetool, ``batch.xlsx``.  A rerun skips finished images unless
``--force``.  Models: ``--model KIND=NAME_OR_DIR``; parameters: ``--param KEY=VALUE`` (the
pipeline's parameter names, values as JSON or text).  Exit code 1 when some image failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.core.errors import UserError

EXIT_OK = 0
EXIT_FAILED_IMAGES = 1


def add_parser(subparsers: Any) -> None:
    """Register ``batch analyze`` on the top-level sub-parsers."""
    parser = subparsers.add_parser("batch", help="batches over many images, here or on a Dask cluster")
    sub = parser.add_subparsers(dest="batch_command", metavar="ACTION", required=True)
    p = sub.add_parser("analyze", help="run a pipeline on many images, one task per image, resumable",
                       description="Run a pipeline over many images, one task per image: here (default), on a "
                                   "running Dask scheduler, or on a cluster it starts. Finished images are skipped "
                                   "on a rerun; each image's folder is written whole or not at all.")
    p.add_argument("pipeline", metavar="PIPELINE", help="kaizen, brightfield, stagetool (or noop, to try a cluster)")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders of images")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (shared by all workers)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786", help="a running Dask scheduler")
    where.add_argument("--cluster", default=None, metavar="local:N|slurm[:N]|pbs[:N]",
                       help="start a cluster: N worker processes here, or N SLURM/PBS jobs (dask-jobqueue)")
    p.add_argument("--cluster-option", action="append", default=[], metavar="KEY=VALUE",
                   help="for slurm/pbs: queue, account, cores, memory, walltime, ... (dask-jobqueue arguments)")
    p.add_argument("--model", action="append", default=[], metavar="KIND=NAME_OR_DIR",
                   help="kaizen=..., brightfield=..., tubules=... / cells=... (default: the shipped models)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a pipeline parameter")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads of a local batch (Dask workers use one thread each)")
    p.add_argument("--force", action="store_true", help="analyse again images that are already done")
    p.add_argument("--quiet", action="store_true", help="only the progress bar, no line per image")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_analyze)


def parse_pairs(values: list[str], option: str, as_json: bool = True) -> dict[str, Any]:
    """``KEY=VALUE`` strings to a dict; values parsed as JSON when they are JSON, else kept as text."""
    pairs: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{option} expects KEY=VALUE, not '{item}'")
        if as_json:
            try:
                pairs[key.strip()] = json.loads(value)
                continue
            except ValueError:
                pass
        pairs[key.strip()] = value
    return pairs


def cmd_analyze(args: argparse.Namespace) -> int:
    """Run the batch with a progress bar and print where everything went."""
    from app.batch.progress import ProgressBar, format_seconds
    from app.batch.runner import run_batch
    from app.cli import print_json
    from app.core.outputs import collect_kept

    cluster = args.scheduler or args.cluster or ""
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, not {args.threads}")
        from app.core.device import use_threads

        use_threads(args.threads)
    if args.scheduler and "://" not in args.scheduler:
        raise UserError(f"--scheduler expects an address such as tcp://HOST:8786, not '{args.scheduler}'")
    with collect_kept() as kept:  # batch-wide reports the user changed are kept (app.core.outputs)
        result = run_batch(args.pipeline, args.inputs, args.out, cluster=cluster,
                           models=parse_pairs(args.model, "--model", as_json=False),
                           params=parse_pairs(args.param, "--param"),
                           progress=ProgressBar(verbose=not args.quiet), force=args.force,
                           cluster_options=parse_pairs(args.cluster_option, "--cluster-option"))
    for item in kept:
        print(f"  {item.message()}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print_json({k: v for k, v in result.items() if k != "records"})
        return EXIT_FAILED_IMAGES if result["counts"]["failed"] else EXIT_OK
    counts = result["counts"]
    print(f"{counts['done']} done, {counts['skipped']} already done, {counts['failed']} failed "
          f"in {format_seconds(result['wall_s'])} ({result['cluster']}) -> {result['folder']}")
    print(f"  dashboard: {result['dashboard'] or 'no dashboard'}")
    _print_workers(result["workers"])
    print(f"  summary: {result['report']['json']} and {result['report']['csv']}")
    for key, path in result["outputs"].items():
        print(f"  {key}: {path}")
    for record in result["records"]:
        if record["status"] == "failed":
            print(f"  FAILED {record['image']}: {record.get('error')}")
    return EXIT_FAILED_IMAGES if counts["failed"] else EXIT_OK


def _print_workers(workers: dict[str, dict[str, Any]]) -> None:
    """Per worker: images, throughput, device and model loads."""
    for address, row in sorted(workers.items()):
        rate = f"{row['images_per_min']:.1f} images/min" if row["images_per_min"] else "-"
        print(f"  worker {address} ({row['device'] or '?'}): {row['images']} images, {rate}, "
              f"{row['model_loads']} model load(s)")
