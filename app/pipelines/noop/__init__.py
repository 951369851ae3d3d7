"""``noop``: reads each image, waits ``seconds`` and writes its size and sha256 (hidden from the GUI).

A pipeline for trying a cluster and measuring per-task overhead (``stagescope batch analyze noop``),
and the fault tests' probe: no model, no torch.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from app.core.jobs import Job, Progress
from app.pipelines.contract import Item, PipelineSpec
from app.pipelines.registry import register


@dataclass
class NoopParams:
    """How long each image takes."""

    seconds: float = 0.0  # waited per image, in small steps (so progress shows and a cancel is seen)


def analyze_one(item: Item, folder: Path, loaded: object, params: NoopParams) -> Job[dict]:
    """Read the image header and bytes, wait, write started.json and result.json into ``folder``."""
    from app.core.images import open_image

    source = Path(item.sources[0])
    with open_image(source) as image:
        shape = list(image.info.shape)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    (folder / "started.json").write_text(json.dumps({"image": item.name}), encoding="utf-8")
    seconds = float(params.seconds)
    steps = max(1, int(seconds / 0.1))
    for step in range(steps):
        yield Progress("wait", step, steps)
        time.sleep(seconds / steps)
    (folder / "result.json").write_text(json.dumps({"image": item.name, "shape": shape, "sha256": digest}),
                                        encoding="utf-8")
    return {"shape": shape}


SPEC = register(PipelineSpec(
    name="noop", title="No-op (cluster probe)", description="Reads each image and waits; for trying a cluster.",
    params=NoopParams, analyze_one=analyze_one, warm_modules=("app.core.images", "tifffile"), hidden=True,
))
