"""Test helpers for the GUI tests: a small project with a multi-channel section and a fake pipeline.

The fake pipeline is registered through the real registry, so the GUI runs it exactly as it runs
brightfield, stagetool or kaizen: a job generator that yields progress and writes objects.json
files through app.core.results into a run folder of the project.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.jobs import Progress

FAKE_NAME = "fake"
STAGE_NAMES = ("I-V", "VI-VIII", "IX", "X-XI", "XII")
CELL_NAMES = ("Sertoli", "Spg", "Spc Pach", "round spermatid")


def write_section(path: Path, height: int = 600, width: int = 800, channels: int = 2, seed: int = 0) -> Path:
    """A small OME-TIFF (C, Y, X) uint16 with bright discs (the "tubules"), named channels and pixel size."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    data = rng.integers(50, 150, size=(channels, height, width)).astype(np.uint16)
    for cy, cx, r in tubule_circles(height, width):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        data[0][inside] += 2000
        if channels > 1:
            data[1][inside] += 500
    names = ["DAPI"] + [f"marker{i}" for i in range(1, channels)]
    tifffile.imwrite(path, data, ome=True, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": names},
                               "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    return path


def tubule_circles(height: int, width: int) -> list[tuple[float, float, float]]:
    """(cy, cx, r) of the discs in :func:`write_section` images."""
    r = min(height, width) / 8
    return [(height * fy, width * fx, r) for fy in (0.3, 0.7) for fx in (0.25, 0.5, 0.75)]


def fake_layers(height: int, width: int, cells_per_tubule: int = 6) -> dict[str, list[dict]]:
    """Tubules (polygons, stage classes) and cells (boxes, types) matching the discs."""
    tubules, cells = [], []
    for index, (cy, cx, r) in enumerate(tubule_circles(height, width)):
        angles = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        polygon = [[float(cx + r * math.cos(a)), float(cy + r * math.sin(a))] for a in angles]
        tubules.append({"id": index + 1, "class": STAGE_NAMES[index % len(STAGE_NAMES)], "score": 0.9,
                        "box": [cx - r, cy - r, cx + r, cy + r], "polygon": polygon, "centroid": [cy, cx],
                        "area": math.pi * r * r, "excluded": False})
        for k in range(cells_per_tubule):
            a = 2 * math.pi * k / cells_per_tubule
            y, x = cy + 0.6 * r * math.sin(a), cx + 0.6 * r * math.cos(a)
            cells.append({"id": len(cells) + 1, "class": CELL_NAMES[k % len(CELL_NAMES)], "score": 0.8,
                          "box": [x - 5, y - 5, x + 5, y + 5], "centroid": [y, x], "tubule_id": index + 1})
    return {"tubules": tubules, "cells": cells}


@dataclass
class FakeParams:
    """Parameters of the fake pipeline (the run form is built from these)."""

    cells_per_tubule: int = 6
    delay_s: float = 0.0  # seconds to sleep per step, to test cancel
    fail: bool = False  # raise instead of finishing
    device: str = "auto"
    note: str | None = None
    stack: bool = False  # also write a Kaizen-like stack of generated object images


def fake_analyze(project: Any, image_names: list[str], params: FakeParams, models: dict[str, str]):
    """Job: write fake tubules and cells for each image into a new run; returns the run folder."""
    from app.core.results import OBJECTS_FILE, write_objects

    from app.pipelines.registry import analyze_images

    run = project.new_run(FAKE_NAME, params, models)

    def one(name: str, folder: Path):
        for step in range(5):
            if params.delay_s:
                time.sleep(params.delay_s)
            yield Progress("tiles", step + 1, 5, f"{name}: tile {step + 1}/5")
        if params.fail:
            raise ValueError(f"fake failure on {name}")
        with project.open_image(name) as image:
            height, width = image.info.height, image.info.width
        outputs = {"objects": folder / OBJECTS_FILE}
        write_objects(outputs["objects"], name, FAKE_NAME, fake_layers(height, width, params.cells_per_tubule))
        if params.stack:
            outputs["stack"] = folder / f"{name}.objects.npz"
            images = np.ones((2, 4, 4), np.float32)
            np.savez_compressed(outputs["stack"], images=images, offsets=np.array([[10, 20], [12, 22]]),
                                shapes=np.array([[4, 4], [4, 4]]), ids=np.array([1, 2]))
        return outputs

    return (yield from analyze_images(run, image_names, one))


def register_fake() -> Any:
    """Register the fake pipeline in the real registry (idempotent)."""
    from app.pipelines.registry import PipelineSpec, register

    return register(PipelineSpec(name=FAKE_NAME, title="Fake pipeline", description="Draws fixed tubules and cells.",
                                 params=FakeParams, analyze=fake_analyze,
                                 image_kinds=("section",), layers=("tubules", "cells")))


def make_project(folder: Path, n_images: int = 2, with_run: bool = False) -> Any:
    """A project with ``n_images`` small sections (and a finished fake run when asked)."""
    from app.core.jobs import run as run_job
    from app.core.project import Project

    project = Project.create(folder / "project", name="GUI test")
    raw = folder / "raw"
    raw.mkdir(exist_ok=True)
    for index in range(n_images):
        write_section(raw / f"section{index + 1}.ome.tif", seed=index)
        project.add_image(raw / f"section{index + 1}.ome.tif", group="sections")
    if with_run:
        run_job(fake_analyze(project, [e.name for e in project.images()], FakeParams(), {}))
    return Project.open(project.folder)
