"""``toy``: a fourth pipeline in one folder, registered from outside app/ (tests of the pipeline contract).

Bright blobs above ``threshold`` x the image mean become labelled objects.  It has everything a real
pipeline has and nothing more: a params dataclass, a "model" loaded once per process (a smoothing
kernel, counted in ``LOADS``), ``analyze_one`` writing ``labels.tif`` and ``objects.json`` into the
item's folder, and ``finish`` writing a table over all items.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.jobs import Job, Progress
from app.pipelines.contract import Item, Layer, PipelineSpec
from app.pipelines.registry import register

LOADS: list[int] = []  # process ids that loaded the "model" (once per process or worker)


@dataclass
class ToyParams:
    """How blobs are found."""

    threshold: float = field(default=1.5, metadata={"help": "blob pixels are above this x the image mean"})
    min_area: int = field(default=4, metadata={"help": "smaller blobs are dropped (pixels)"})
    smooth: bool = field(default=True, metadata={"help": "smooth with the 3x3 kernel first"})


def load(folders: dict[str, str], params: ToyParams) -> dict[str, Any]:
    """The toy's "model": a normalised 3x3 kernel."""
    LOADS.append(os.getpid())
    return {"kernel": np.full((3, 3), 1 / 9, np.float32)}


def analyze_one(item: Item, folder: Path, loaded: dict[str, Any], params: ToyParams) -> Job[dict]:
    """Label the blobs of one image: labels.tif (uint16) and objects.json (layer "blobs")."""
    import tifffile
    from scipy import ndimage

    from app.core.results import write_objects

    image = tifffile.imread(item.sources[0]).astype(np.float32)
    yield Progress("blobs", 0, 1, item.name)
    if params.smooth:
        image = ndimage.convolve(image, loaded["kernel"], mode="nearest")
    labels, count = ndimage.label(image > params.threshold * float(image.mean()))
    sizes = np.bincount(labels.ravel())
    labels[np.isin(labels, np.nonzero(sizes < params.min_area)[0])] = 0
    labels, count = ndimage.label(labels > 0)
    tifffile.imwrite(folder / "labels.tif", labels.astype(np.uint16), compression="zlib")
    boxes = ndimage.find_objects(labels)
    objects = [{"id": i + 1, "class": "blob", "box": [b[1].start, b[0].start, b[1].stop, b[0].stop]}
               for i, b in enumerate(boxes)]
    write_objects(folder / "objects.json", item.name, "toy", {"blobs": objects})
    yield Progress("blobs", 1, 1, f"{count} blobs")
    return {"count": int(count)}


def finish(out: Path, names: list[str], params: ToyParams, force: bool = False, skipped: tuple = ()) -> dict[str, Path]:
    """counts.json: blobs per finished item."""
    counts = {}
    for name in names:
        doc = json.loads((Path(out) / name / "objects.json").read_text())
        counts[name] = len(doc["layers"]["blobs"])
    path = Path(out) / "counts.json"
    path.write_text(json.dumps(counts, sort_keys=True))
    return {"counts": path}


SPEC = register(PipelineSpec(
    name="toy", title="Toy: bright blobs", description="Thresholded blobs (a test of the pipeline contract).",
    params=ToyParams, analyze_one=analyze_one, load=load, finish=finish, layers=(Layer("blobs", "#ff8800"),),
    warm_modules=("scipy.ndimage", "tifffile"),
))
