"""The batch summary: per image the worker, device, time and status (JSON + CSV), and per worker its throughput.

``batch_report.json`` holds everything (records, workers, totals, the cluster, errors with their
tracebacks); ``batch_report.csv`` has one row per image for a spreadsheet.  Both are written
atomically at the end of a batch (and again by a rerun, which lists skipped images with the
worker and time of the run that made them).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.core.atomic import atomic_write_json
from app.core.outputs import save_report_text

REPORT_JSON = "batch_report.json"
REPORT_CSV = "batch_report.csv"
CSV_COLUMNS = ("image", "status", "worker", "host", "pid", "device", "seconds", "load_seconds", "model_loaded",
               "source", "error")


def worker_table(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per worker that ran images in this batch: images, busy seconds, images per minute, device, model loads."""
    table: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("status") not in ("done", "failed", "duplicate") or record.get("reused"):
            continue
        row = table.setdefault(record.get("worker", "?"), {"host": record.get("host"), "device": record.get("device"),
                                                           "images": 0, "failed": 0, "busy_s": 0.0,
                                                           "model_loads": 0})
        row["images"] += record["status"] != "failed"
        row["failed"] += record["status"] == "failed"
        row["busy_s"] += float(record.get("seconds") or 0.0)
        row["model_loads"] += bool(record.get("model_loaded"))
        row["device"] = row["device"] or record.get("device")
    for row in table.values():
        row["busy_s"] = round(row["busy_s"], 3)
        row["images_per_min"] = round(60 * row["images"] / row["busy_s"], 2) if row["busy_s"] > 0 else None
    return table


def totals(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many images ended in each status."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    return counts


def to_csv(records: Sequence[dict[str, Any]]) -> str:
    """One row per image (columns :data:`CSV_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: ("" if record.get(k) is None else record.get(k)) for k in CSV_COLUMNS})
    return buffer.getvalue()


def write_summary(out: Path, records: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Path]:
    """Write batch_report.json and batch_report.csv into ``out``; returns their paths."""
    ordered = sorted(records, key=lambda r: r["image"])
    document = {**meta, "totals": totals(ordered), "workers": worker_table(ordered), "images": ordered}
    paths = {"json": Path(out) / REPORT_JSON, "csv": Path(out) / REPORT_CSV}
    atomic_write_json(paths["json"], document)
    paths["csv"] = save_report_text(paths["csv"], to_csv(ordered))  # one the user changed is kept
    return paths
