"""The questions a lab asks, each answered by training and testing on held-out fields.

``experiment planes``: error for each single plane, then for 1, 2, 3 ... planes chosen best-first
(Fishman et al. 2021 found single central planes worst and 2 planes better than 1).
``experiment size``: error against the number of training crops (or fields).

Every field takes a turn as the test field (train on the others); numbers are measured on the
test field only.  The best-first order of planes is chosen on the *training* fields' validation
strips, never on the test field, so the plane table is not tuned on what it reports.
Error = 1 - F1, object F1 at IoU 0.5 and pixel F1, as in the paper; AUROC of the probability map.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.jobs import Job, Progress
from app.pipelines.brightfield.params import ExperimentParams, SegmentParams, TrainParams, to_dict
from app.pipelines.brightfield.predict import BrightfieldModel, instances, probability_job
from app.pipelines.brightfield.stack import PlaneStack
from app.pipelines.brightfield.train import TrainingField, train

METRICS = ("object_f1", "pixel_f1", "auroc")


def scores(truth: np.ndarray, pred: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """Object F1 / precision / recall at IoU 0.5, pixel F1 and AUROC of one field."""
    from app.core.metrics import instance_scores, pixel_auroc

    inst = instance_scores([(truth, pred)])
    t, p = truth > 0, pred > 0
    tp = float(np.count_nonzero(t & p))
    denominator = float(np.count_nonzero(t) + np.count_nonzero(p))
    return {
        "object_f1": float(inst["f1"]),
        "object_precision": float(inst["precision"]),
        "object_recall": float(inst["recall"]),
        **{k: float(inst[k]) for k in ("AP50", "AP60", "AP70", "AP80", "AP90")},
        "pixel_f1": 2 * tp / denominator if denominator else 1.0,
        "auroc": float(pixel_auroc(t, probability)),
        "n_true": int(inst["n_true"]),
        "n_pred": int(inst["n_pred"]),
    }


def evaluate(
    model: BrightfieldModel, field_: TrainingField, params: SegmentParams | None = None
) -> Job[dict[str, float]]:
    """Segment a labelled field and score it (a job)."""
    params = params or model.segment
    prob = yield from probability_job(model, model.planes(field_.stack), params)
    pred = instances(prob, params)
    return scores(np.asarray(field_.labels), pred, prob[0])


@dataclass
class Fold:
    """Training fields and the field held out for testing."""

    train: list[TrainingField]
    test: TrainingField

    @property
    def name(self) -> str:
        """e.g. 'set1 -> set2'."""
        return f"{'+'.join(f.name for f in self.train)} -> {self.test.name}"


def make_folds(fields: Sequence[TrainingField], folds: int | None = None) -> list[Fold]:
    """Each field (up to ``folds`` of them) is tested once, trained on all the others."""
    if len(fields) < 2:
        from app.core.errors import UserError

        raise UserError("an experiment needs at least two fields: one to train on and one to test on")
    n = len(fields) if folds is None else max(1, min(folds, len(fields)))
    order = list(range(len(fields)))[::-1][:n]  # the last field is tested first
    return [Fold([f for j, f in enumerate(fields) if j != i], fields[i]) for i in order]


@dataclass
class ExperimentTable:
    """Rows of an experiment: each row a setting, the mean of its metrics over folds and repeats."""

    title: str
    key: str  # column that names the setting
    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)  # every training run, per fold
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        """A plain-text table (what the CLI prints)."""
        columns = [self.key, "object_f1", "pixel_f1", "auroc", "object_error", "pixel_error", "n"]
        extra = [c for c in ("kind", "z_offsets_um", "val_loss") if any(c in r for r in self.rows)]
        columns[1:1] = extra
        body = [[_fmt(row.get(c)) for c in columns] for row in self.rows]
        widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
        lines = [self.title, "  ".join(c.ljust(w) for c, w in zip(columns, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_csv(self) -> str:
        """Every run as CSV (fold, setting, seed, metrics)."""
        buffer = io.StringIO()
        keys = sorted({k for r in self.runs for k in r}, key=lambda k: (k not in ("fold", self.key, "seed"), k))
        writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for r in self.runs:
            writer.writerow({k: _fmt(v) if isinstance(v, (list, tuple)) else v for k, v in r.items()})
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"title": self.title, "key": self.key, "rows": self.rows, "runs": self.runs,
                "notes": self.notes, "params": self.params}

    def write(self, folder: Path, stem: str, force: bool = False) -> list[Path]:
        """Write ``stem``.txt, .csv, .json and .png into ``folder``; returns the paths.

        When the user changed one of an earlier run's files, the set goes under ``stem (2)`` instead
        (app.core.outputs), unless ``force``.
        """
        from app.core.atomic import atomic_write_json, atomic_write_text
        from app.core.outputs import free_stem, remember

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = free_stem(folder, stem, (".csv", ".txt", ".json", ".png"), force)
        paths = [atomic_write_text(folder / f"{stem}.txt", self.to_text() + "\n"),
                 atomic_write_text(folder / f"{stem}.csv", self.to_csv()),
                 atomic_write_json(folder / f"{stem}.json", self.to_dict())]
        labels = [_fmt(r[self.key]) for r in self.rows]
        series = {"object error (1 - F1)": [r["object_error"] for r in self.rows],
                  "pixel error (1 - F1)": [r["pixel_error"] for r in self.rows]}
        paths.append(plot_lines(folder / f"{stem}.png", self.title, labels, series, self.key))
        for path in paths:
            remember(path)
        return [Path(p) for p in paths]


def _fmt(value: Any) -> str:
    """Compact text for a table cell."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        return ",".join(_fmt(v) if not isinstance(v, float) else f"{v:g}" for v in value)
    return str(value)


def _mean_row(key: str, setting: Any, runs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Mean metrics of the runs of one setting, with errors = 1 - F1."""
    row: dict[str, Any] = {key: setting, **extra}
    for metric in (*METRICS, "val_loss"):
        values = [r[metric] for r in runs if metric in r and r[metric] is not None]
        if values:
            row[metric] = float(np.mean(values))
    row["object_error"] = 1 - row["object_f1"]
    row["pixel_error"] = 1 - row["pixel_f1"]
    row["n"] = len(runs)
    return row


def _run(fold: Fold, train_params: TrainParams, segment: SegmentParams, label: str) -> Job[dict[str, Any]]:
    """Train on a fold's training fields and score its test field."""
    result = yield from _relabel(train(fold.train, train_params), f"{label}: train")
    model = BrightfieldModel.from_result(result)
    measured = yield from _relabel(evaluate(model, fold.test, segment), f"{label}: test")
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
    return {"fold": fold.name, "seed": train_params.seed, **measured, "val_loss": best.get("val_loss"),
            "epochs": len(result.history), "train_seconds": result.seconds}


def _empty_table(title: str, key: str, folds: Sequence[Fold], params: ExperimentParams,
                 segment: SegmentParams) -> ExperimentTable:
    """A table titled with its folds, recording the experiment's parameters."""
    return ExperimentTable(f"{title} ({', '.join(f.name for f in folds)})", key,
                           params={"experiment": to_dict(params), "segment": to_dict(segment)})


@dataclass
class _Tally:
    """Training runs done out of ``total`` in an experiment (for progress)."""

    total: int
    done: int = 0


def _runs(folds: Sequence[Fold], repeats: int, tally: _Tally, key: str, setting: Any, label: str,
          segment: SegmentParams, make_params: Callable[[int], TrainParams],
          fold_for: Callable[[Fold], Fold] | None = None) -> Job[list[dict[str, Any]]]:
    """Train and test one setting on every fold, ``repeats`` seeds each; the runs, tagged ``key: setting``."""
    runs = []
    for fold in folds:
        for r in range(repeats):
            yield Progress("experiment", tally.done, tally.total, f"{label}, {fold.name}, seed {r}")
            measured = yield from _run(fold_for(fold) if fold_for else fold, make_params(r), segment, label)
            runs.append({key: setting, **measured})
            tally.done += 1
    return runs


def _relabel(job: Job[Any], prefix: str) -> Job[Any]:
    """Pass a sub-job's progress on with ``prefix`` in the message; returns its result."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        yield Progress(event.stage, event.done, event.total, f"{prefix}: {event.message}", event.data)


def experiment_planes(
    fields: Sequence[TrainingField],
    params: ExperimentParams | None = None,
    base: TrainParams | None = None,
    segment: SegmentParams | None = None,
) -> Job[ExperimentTable]:
    """Error for each single plane, then for the best 1, 2, 3 ... planes together (see module doc)."""
    params, segment = params or ExperimentParams(), segment or SegmentParams()
    folds = make_folds(fields, params.folds)
    n, offsets = fields[0].stack.n_planes, fields[0].stack.z_offsets()
    table = _empty_table("planes: error on the held-out field", "planes", folds, params, segment)
    tally = _Tally((n + max(0, min(params.max_planes or n, n) - 1)) * len(folds) * params.repeats)
    singles = []
    for i in range(n):
        runs = yield from _runs(folds, params.repeats, tally, "planes", (i,), f"plane {i}", segment,
                                lambda r, i=i: _plane_params(params, base, (i,), r))
        table.runs.extend(runs)
        row = _mean_row("planes", (i,), runs, kind="single", z_offsets_um=[offsets[i]] if offsets else None)
        singles.append(row)
        table.rows.append(row)
    order = sorted(range(n), key=lambda i: singles[i].get("val_loss", math.inf))
    table.notes.append(f"best-first order from the training fields' validation loss: planes {order}")
    for k in range(2, min(params.max_planes or n, n) + 1):
        chosen = tuple(sorted(order[:k]))
        runs = yield from _runs(folds, params.repeats, tally, "planes", chosen, f"{k} planes {chosen}", segment,
                                lambda r, chosen=chosen: _plane_params(params, base, chosen, r))
        table.runs.extend(runs)
        table.rows.append(_mean_row("planes", chosen, runs, kind=f"best {k}",
                                    z_offsets_um=[offsets[i] for i in chosen] if offsets else None))
    yield Progress("experiment", tally.total, tally.total, "done")
    return table


def _plane_params(params: ExperimentParams, base: TrainParams | None, planes: tuple[int, ...], repeat: int) -> TrainParams:
    """Training parameters of one run of the plane experiment."""
    import dataclasses

    tp = params.train_params(base)
    return dataclasses.replace(tp, planes=planes, seed=tp.seed + repeat)


def experiment_size(
    fields: Sequence[TrainingField],
    params: ExperimentParams | None = None,
    base: TrainParams | None = None,
    segment: SegmentParams | None = None,
) -> Job[ExperimentTable]:
    """Error against the number of training crops (``by='crops'``) or training fields (``by='fields'``)."""
    import dataclasses

    params, segment = params or ExperimentParams(), segment or SegmentParams()
    if params.by not in ("crops", "fields"):
        from app.core.errors import UserError

        raise UserError(f"experiment size counts crops or fields, not {params.by!r}")
    folds = make_folds(fields, params.folds)
    key = "training " + params.by
    table = _empty_table(f"size: error on the held-out field against {key}", key, folds, params, segment)
    sizes = list(params.sizes)
    if params.by == "fields":
        sizes = [s for s in sizes if s <= len(fields) - 1] or [len(fields) - 1]
    tally = _Tally(len(sizes) * len(folds) * params.repeats)
    for size in sizes:
        def size_params(r: int, size: int = size) -> TrainParams:
            tp = params.train_params(base)
            return dataclasses.replace(tp, seed=tp.seed + r, max_crops=size if params.by == "crops" else None)

        def fewer_fields(fold: Fold, size: int = size) -> Fold:
            return Fold(fold.train[:size], fold.test)

        runs = yield from _runs(folds, params.repeats, tally, key, size, f"{size} {params.by}", segment, size_params,
                                fewer_fields if params.by == "fields" else None)
        table.runs.extend(runs)
        table.rows.append(_mean_row(key, size, runs))
    if params.by == "crops":
        table.notes.append("every run trains for the same number of steps; only the number of distinct crops changes "
                           "(augmentation still varies each crop)")
    yield Progress("experiment", tally.total, tally.total, "done")
    return table


# ------------------------------------------------------------------------------------ plotting


def plot_lines(path: Path, title: str, x_labels: Sequence[str], series: dict[str, Sequence[float]], x_title: str) -> Path:
    """A small line chart as PNG (Pillow only, no plotting library needed); y from 0 to 1."""
    from PIL import Image, ImageDraw

    from app.core.atomic import atomic_path

    width, height, left, right, top, bottom = 760, 440, 70, 20, 50, 90
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 15), title[:110], fill="black")
    x0, x1, y0, y1 = left, width - right, height - bottom, top
    draw.line([(x0, y1), (x0, y0), (x1, y0)], fill="black")
    top_value = max([1e-6] + [v for s in series.values() for v in s if v == v])
    y_max = min(1.0, math.ceil(top_value * 10 + 0.5) / 10)
    for k in range(6):
        value = y_max * k / 5
        y = y0 - (y0 - y1) * k / 5
        draw.line([(x0 - 4, y), (x1, y)], fill=(225, 225, 225) if k else "black")
        draw.text((8, y - 6), f"{value:.2f}", fill="black")
    n = max(1, len(x_labels))
    xs = [x0 + (x1 - x0) * (i + 0.5) / n for i in range(len(x_labels))]
    for x, label in zip(xs, x_labels):
        draw.text((x - 3 * len(label), y0 + 8), label, fill="black")
    draw.text(((x0 + x1) // 2 - 3 * len(x_title), y0 + 32), x_title, fill="black")
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    for j, (name, values) in enumerate(series.items()):
        colour = colours[j % len(colours)]
        points = [(x, y0 - (y0 - y1) * min(v, y_max) / y_max) for x, v in zip(xs, values) if v == v]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.text((x0 + 10 + 250 * j, y0 + 56), f"-- {name}", fill=colour)
    draw.text((8, 30), "error", fill="black")
    with atomic_path(Path(path)) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def load_table(path: Path) -> ExperimentTable:
    """Read a table written by :meth:`ExperimentTable.write` (its .json)."""
    data = json.loads(Path(path).read_text())
    return ExperimentTable(data["title"], data["key"], data["rows"], data["runs"], data["notes"], data["params"])


def phantom_fields(n: int, size: int = 256, n_planes: int = 9, seed: int = 0) -> list[TrainingField]:
    """``n`` synthetic brightfield stacks (9 planes by default) with exact nuclei labels, from app.core.phantoms."""
    from app.core import phantoms

    if not hasattr(phantoms, "brightfield_stack"):
        from app.core.errors import UserError

        raise UserError("this build has no brightfield phantoms (app.core.phantoms.brightfield_stack)")
    fields = []
    for i in range(n):
        out = phantoms.brightfield_stack(seed=seed + i, size=size, n_planes=n_planes)
        stack = PlaneStack(np.asarray(out.planes, np.float32), list(out.z_um), [], f"phantom{seed + i}")
        fields.append(TrainingField(stack, np.asarray(out.labels), f"phantom{seed + i}"))
    return fields
