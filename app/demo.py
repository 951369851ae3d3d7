"""The headless demo behind `./run.sh` without a display: build the sample project, run what exists.

The sample project is generated from seeded phantoms (recipe in resources/sample_project.json)
rather than stored as binary files, so it is identical on every machine and costs the repo nothing.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from app.core.errors import UserError
from app.core.paths import resource_dir, user_data_dir

DemoStep = Callable[["object", Path], list[str]]


def sample_recipe() -> dict:
    """The sample project's recipe: which phantoms, seeds and sizes."""
    return json.loads((resource_dir() / "sample_project.json").read_text())


def default_demo_dir() -> Path:
    return user_data_dir() / "sample-project"


def build_sample_project(folder: Path, force: bool = False):
    """Create (or reopen) the sample project in ``folder`` from the recipe's phantoms."""
    from app.pipelines.phantoms import write_phantom
    from app.core.project import Project

    folder = Path(folder)
    if force and folder.exists():
        if not (folder / "project.json").exists():
            raise UserError(f"{folder}: not a Stagescope project; refusing to delete it with --force")
        shutil.rmtree(folder)
    if (folder / "project.json").exists():
        return Project.open(folder)
    recipe = sample_recipe()
    project = Project.create(folder, name=recipe["name"])
    raw = folder / "raw"
    for entry in recipe["phantoms"]:
        out = raw / entry["kind"]
        markers = tuple(entry["markers"]) if entry.get("markers") else None
        write_phantom(entry["kind"], out, seed=entry["seed"], count=entry["count"], size=entry["size"], markers=markers)
        for image in sorted(out.iterdir()):
            if _is_input_image(image, entry["kind"]):
                project.add_image(image, mode="link", group=entry["group"])
    return project


def _is_input_image(path: Path, kind: str) -> bool:
    """Images a user would analyse, not the ground truth written beside them."""
    name = path.name.lower()
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    return not any(tag in name for tag in ("label", "truth", "mask", "tubule", "cells"))


def _kaizen_step(project, folder: Path) -> list[str]:
    """Decompose the sample's fluorescence nuclei with the shipped Kaizen model."""
    from app.core.jobs import ConsoleProgress, run
    from app.pipelines.registry import get

    spec = get("kaizen")
    names = [e.name for e in project.images() if e.group == "fluorescence nuclei"]
    run_folder = run(spec.analyze(project, names, spec.params(), {}), ConsoleProgress())
    return sorted(str(p) for p in Path(run_folder).rglob("*.tif"))


def _brightfield_step(project, folder: Path) -> list[str]:
    """Count nuclei in the sample's brightfield field with the shipped phantom-trained model (it has 9 planes)."""
    from app.core.jobs import ConsoleProgress, run
    from app.pipelines.registry import get

    spec = get("brightfield")
    names = [e.name for e in project.images() if e.group == "brightfield fields" and "planes" in e.name]
    run_folder = run(spec.analyze(project, names, spec.params(), {"brightfield": "brightfield-phantom-demo"}),
                     ConsoleProgress())
    return sorted(str(p) for p in Path(run_folder).rglob("*") if p.suffix in (".tif", ".csv"))


def _stagetool_step(project, folder: Path) -> list[str]:
    """Stage the sample's testis section with the shipped demo models; the batch workbook goes to reports."""
    from app.pipelines.stagetool.batch import demo_step

    return demo_step(project, folder)


def pipeline_steps() -> list[tuple[str, DemoStep]]:
    """Pipelines that can run in the demo with their shipped models (added as they land)."""
    return [("kaizen (shipped kaizen-nuclei model)", _kaizen_step),
            ("brightfield (shipped brightfield-phantom-demo model)", _brightfield_step),
            ("stagetool (shipped stagetool-tubules-demo and stagetool-cells-demo models)", _stagetool_step)]


def run_demo(out: Path | None = None, force: bool = False) -> int:
    """Build the sample project, run every available pipeline on it, print where things went."""
    folder = Path(out) if out is not None else default_demo_dir()
    start = time.monotonic()
    project = build_sample_project(folder, force=force)
    images = project.images()
    print(f"sample project: {project.root}")
    print(f"  {len(images)} images (synthetic phantoms with ground truth in {project.root / 'raw'})")
    produced: list[str] = []
    for name, step in pipeline_steps():
        print(f"running {name} ...", flush=True)
        produced += step(project, folder)
    for path in produced:
        print(f"  wrote {path}")
    if not produced:
        print("  no pipeline with a shipped model is available yet: try `stagescope --help`")
    print(f"done in {time.monotonic() - start:.1f} s")
    return 0
