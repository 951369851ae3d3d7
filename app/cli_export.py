"""`stagescope export qupath|labels RUN_OR_RESULTS --out DIR`: results for QuPath and napari.

``qupath`` writes one GeoJSON per image (File > Import objects in QuPath; also readable back as
training annotations); ``labels`` writes per image and layer an instance-label TIFF and a CSV
of centroids with class and measurements (napari opens both).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0


def add_parser(subparsers: Any) -> None:
    """Register ``export`` on the top-level sub-parsers."""
    p = subparsers.add_parser("export", help="results as QuPath GeoJSON or napari label TIFFs + CSV",
                              description="Export the objects of a run folder or a results folder (any pipeline): "
                                          "'qupath' writes IMAGE.geojson (File > Import objects); 'labels' writes "
                                          "IMAGE_LAYER_labels.tif and IMAGE_LAYER.csv (napari: File > Open).")
    p.add_argument("format", choices=("qupath", "labels"), metavar="qupath|labels", help="what to write")
    p.add_argument("source", type=Path, metavar="RUN_OR_RESULTS",
                   help="a project run folder, a results folder of any pipeline, one objects.json, or a whole "
                        "project (an image analysed in several runs gets a folder per run)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write into")
    p.add_argument("--force", action="store_true",
                   help="replace export files you changed (otherwise they are kept and the new ones get a (2) name)")
    p.add_argument("--json", action="store_true", help="print the written files as JSON")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Run the export job with console progress; print what was written."""
    from app.cli import print_json
    from app.core.jobs import ConsoleProgress, run
    from app.core.outputs import collect_kept
    from app.exports import export_job

    with collect_kept() as kept:
        written = run(export_job(args.source, args.format, args.out, args.force),
                      None if args.json else ConsoleProgress())
    if args.json:
        print_json({"written": [str(p) for p in written]})
    else:
        print(f"wrote {len(written)} file(s) to {args.out}")
    for item in kept:
        print(item.message(), file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK
