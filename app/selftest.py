"""`stagescope --self-test` and `--version`: prove an installed (or source) Stagescope works, headless.

The self-test copies the sample project (bundled in an installed app, generated from its phantoms
when running from source) into a temporary folder, runs every registered pipeline that has a
shipped model on one sample image, writes a report there, reads the report back and checks it.
It prints a readable summary and returns 0 when every pipeline that could run passed, else 1.
Qt-free, so it runs on a machine without a display; nothing is written outside the temp folder
except what the pipelines' own code writes (nothing, for the shipped ones).
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app import __version__
from app.core.paths import bundle_root, bundled_models_dir, bundled_sample_project_dir, is_frozen

REPORT_NAME = "selftest-report.json"

# which sample image each pipeline is tried on: (project group, text in the image name)
SAMPLE_IMAGES: dict[str, tuple[str, str]] = {
    "kaizen": ("fluorescence nuclei", "nuclei"),
    "brightfield": ("brightfield fields", "planes"),
    "stagetool": ("testis sections", ""),
}
# the self-test checks that an install works, not accuracy: the quickest settings where a pipeline has them
QUICK_PARAMS: dict[str, dict[str, Any]] = {
    "stagetool": {"tta": "off"},
}


@dataclass
class PipelineCheck:
    """The outcome of one pipeline on one sample image."""

    pipeline: str
    status: str  # "passed", "failed", "skipped" or "unfit" (the sample image does not suit the shipped model)
    detail: str
    image: str | None = None
    models: dict[str, str] = field(default_factory=dict)
    objects: int | None = None
    seconds: float = 0.0


def torch_device() -> str:
    """The device Stagescope's "auto" setting would use here, in words (imports torch)."""
    import torch

    from app.core.device import describe_device

    text = describe_device("auto")
    return f"cpu ({torch.get_num_threads()} threads)" if text == "CPU" else text


def version_text() -> str:
    """What `stagescope --version` prints: app version, how it runs, torch and its device."""
    import torch

    where = "installed app" if is_frozen() else "from source"
    return (f"stagescope {__version__} ({where}, Python {platform.python_version()}, {platform.system()})\n"
            f"torch {torch.__version__}, device: {torch_device()}")


# ------------------------------------------------------------------------------ sample project


def sample_project_copy(target: Path) -> Any:
    """A fresh sample project in ``target``: a copy of the bundled one, else generated from the recipe."""
    from app.core.project import Project

    source = bundled_sample_project_dir()
    if (source / "project.json").is_file():
        shutil.copytree(source, target)
        return Project.open(target)
    from app.demo import build_sample_project

    return build_sample_project(target)


def pick_image(project: Any, pipeline: str) -> str | None:
    """The sample image a pipeline is tried on, or None when the sample project has none for it."""
    group, text = SAMPLE_IMAGES.get(pipeline, ("", ""))
    names = sorted(e.name for e in project.images() if e.group == group and text in e.name)
    return names[0] if names else None


def quick_params(spec: Any) -> Any:
    """The pipeline's default parameters with the quick settings of QUICK_PARAMS (fields it has)."""
    import dataclasses

    params = spec.params()
    names = {f.name for f in dataclasses.fields(params)}
    return dataclasses.replace(params, **{k: v for k, v in QUICK_PARAMS.get(spec.name, {}).items() if k in names})


def shipped_models(model_pipelines: tuple[str, ...]) -> dict[str, str] | str:
    """{model pipeline: bundled model folder} for every model a pipeline needs, or why one is missing."""
    from app.core.modelcard import find_models

    chosen: dict[str, str] = {}
    for name in model_pipelines:
        cards = find_models(name, dirs=[bundled_models_dir()])
        if not cards:
            return f"no shipped '{name}' model in {bundled_models_dir()}"
        chosen[name] = str(cards[0].folder)
    return chosen


# ------------------------------------------------------------------------------ one pipeline


def check_pipeline(project: Any, spec: Any) -> PipelineCheck:
    """Run one registered pipeline on its sample image with the shipped models, and check what it wrote."""
    from app.core.errors import UserError
    from app.core.jobs import run

    models = shipped_models(spec.model_pipelines)
    if isinstance(models, str):
        return PipelineCheck(spec.name, "skipped", models)
    image = pick_image(project, spec.name)
    if image is None:
        return PipelineCheck(spec.name, "skipped", "the sample project has no image for this pipeline", models=models)
    start = time.monotonic()
    try:
        run_folder = Path(run(spec.analyze(project, [image], quick_params(spec), models)))
    except UserError as error:  # the pipeline refused this input: a sample-data problem, not a broken install
        return PipelineCheck(spec.name, "unfit", f"{type(error).__name__}: {error}", image, models,
                             seconds=time.monotonic() - start)
    except Exception as error:  # noqa: BLE001 - a self-test reports every failure instead of stopping
        return _failed(spec.name, error, image, models, start)
    try:
        objects = check_run_folder(run_folder, image)
    except Exception as error:  # noqa: BLE001 - includes a results file the app cannot read back
        return _failed(spec.name, error, image, models, start)
    return PipelineCheck(spec.name, "passed", f"run folder {run_folder}", image, models, objects,
                         time.monotonic() - start)


def _failed(pipeline: str, error: Exception, image: str, models: dict[str, str], start: float) -> PipelineCheck:
    detail = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=6)}"
    return PipelineCheck(pipeline, "failed", detail, image, models, seconds=time.monotonic() - start)


def check_run_folder(run_folder: Path, image: str) -> int:
    """Check a finished run: run.json finished, the image done, objects JSON readable and not empty."""
    from app.core.runs import Run
    from app.core.results import read_objects

    run = Run.load(run_folder)
    if run.status != "finished":
        raise AssertionError(f"run status is {run.status!r}, not 'finished'")
    if not run.is_done(image):
        raise AssertionError(f"the run has no result for {image}")
    objects_path = run.output_path(image, "objects")
    if objects_path is None or not objects_path.is_file():
        raise AssertionError(f"no objects file for {image} in {run_folder}")
    layers = read_objects(objects_path).get("layers", {})
    count = sum(len(items) for items in layers.values())
    if count == 0:
        raise AssertionError(f"{objects_path}: no objects found in the sample image")
    return count


# ------------------------------------------------------------------------------ report


def write_report(folder: Path, checks: list[PipelineCheck], header: dict[str, Any]) -> Path:
    """Write the self-test report (JSON) into ``folder``; returns its path."""
    path = folder / REPORT_NAME
    path.write_text(json.dumps({**header, "pipelines": [asdict(c) for c in checks]}, indent=2))
    return path


def check_report(path: Path, checks: list[PipelineCheck]) -> str | None:
    """Read the report back; None when it lists every pipeline with its status, else what is wrong."""
    try:
        written = json.loads(path.read_text())["pipelines"]
    except (OSError, ValueError, KeyError) as error:
        return f"{path}: unreadable report ({error})"
    if [(p["pipeline"], p["status"]) for p in written] != [(c.pipeline, c.status) for c in checks]:
        return f"{path}: the report does not match the checks that ran"
    return None


def summary_lines(checks: list[PipelineCheck]) -> list[str]:
    """One readable line per pipeline (failures with their first detail line)."""
    lines = []
    for c in checks:
        what = f"{c.objects} objects on {c.image} in {c.seconds:.1f} s" if c.status == "passed" else c.detail.splitlines()[0]
        lines.append(f"  {c.status.upper():8s} {c.pipeline:12s} {what}")
    return lines


def run_self_test(out: Path | None = None, echo: Callable[[str], None] = print) -> int:
    """The whole self-test; returns the exit code (0 all runnable pipelines passed, 1 otherwise)."""
    from app.pipelines.registry import pipelines

    start = time.monotonic()
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="stagescope-selftest-"))
    folder.mkdir(parents=True, exist_ok=True)
    echo(version_text())
    echo(f"bundle: {bundle_root()}")
    echo(f"self-test folder: {folder}")
    project = sample_project_copy(folder / "sample-project")
    echo(f"sample project: {len(project.images())} images")
    checks = []
    for spec in pipelines().values():
        echo(f"running {spec.name} ...")
        checks.append(check_pipeline(project, spec))
        if checks[-1].status == "failed":
            echo(checks[-1].detail)
    header = {"version": __version__, "frozen": is_frozen(), "device": torch_device(),
              "seconds": round(time.monotonic() - start, 1)}
    report = write_report(folder, checks, header)
    problem = check_report(report, checks)
    echo("self-test summary:")
    for line in summary_lines(checks):
        echo(line)
    ok = problem is None and not any(c.status == "failed" for c in checks) and any(c.status == "passed" for c in checks)
    if problem:
        echo(f"  report check failed: {problem}")
    elif not any(c.status == "passed" for c in checks):
        echo("  no pipeline could run: no shipped model found")
    if any(c.status == "unfit" for c in checks):
        echo("  (UNFIT: the pipeline loaded its shipped model but refused the sample image as input; "
             "the install is fine, the sample data does not suit that model)")
    echo(f"report: {report}")
    echo(f"self-test {'PASSED' if ok else 'FAILED'} in {time.monotonic() - start:.1f} s")
    sys.stdout.flush()
    return 0 if ok else 1
