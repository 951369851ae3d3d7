"""Kaizen: decompose fluorescence images into objects with a VQ-VAE that redraws one object at a time.

Method: Majoral & Domnich, PLoS One 2025 (science.md section 3).  Modules: :mod:`.vqvae` (the
network), :mod:`.train` (patches and training job), :mod:`.sizing` (object diameter, rescaling),
:mod:`.decompose` (Algorithms 2 and 3), :mod:`.outputs` (labels, object stack, JSON),
:mod:`.model` (model folders), :mod:`.params` (parameter dataclasses).  Importing the package
registers the pipeline; torch loads only when a job runs.

Typical use::

    from app.pipelines.kaizen.model import load_kaizen_model
    from app.pipelines.kaizen.decompose import decompose
    result = decompose(image, load_kaizen_model())      # the shipped kaizen-nuclei model
    labels = result.labels()                            # uint16, overlaps to the brighter object
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.core.jobs import Job, Progress
from app.pipelines.kaizen.params import DecomposeParams
from app.pipelines.registry import PipelineSpec, register


def analyze_project(project: Any, image_names: list[str], params: DecomposeParams,
                    models: dict[str, str] | None = None) -> Job[Path]:
    """Registry entry point: decompose project images into a new run folder; returns the folder."""
    from app.core.results import write_objects
    from app.pipelines.kaizen.decompose import decompose_job, read_gray
    from app.pipelines.kaizen.model import load_kaizen_model
    from app.pipelines.kaizen.outputs import write_outputs
    from app.pipelines.kaizen.train import resolve_device

    models = models or {}
    model = load_kaizen_model(models.get("kaizen"), device=resolve_device(params.device))
    run = project.new_run("kaizen", params.to_dict(), {"kaizen": model.card.model_id()})
    status = "failed"  # also when a user error stops it; "cancelled" when the consumer closes the job
    try:
        for i, name in enumerate(image_names):
            yield Progress("images", i, len(image_names), name)
            image = read_gray(project.image_path(name))
            result = yield from decompose_job(image, model, params, name=name)
            folder = run.image_dir(name)
            written = write_outputs(folder, "kaizen", result, source=name)
            written["objects"] = write_objects(folder / "objects.json", name, "kaizen",
                                               {"objects": [o.to_dict() for o in result.objects]})
            run.mark_image_done(name, {**written, "count": len(result.objects)})
        yield Progress("images", len(image_names), len(image_names), "done")
        status = "finished"
    except GeneratorExit:
        status = "cancelled"
        raise
    finally:
        run.finish(status)
    return Path(run.folder)


SPEC = register(PipelineSpec(
    name="kaizen",
    title="Kaizen: decompose fluorescence images into objects",
    description="A VQ-VAE redraws one nucleus (or cell) at a time until the internal picture explains the image; "
                "objects may overlap. Outputs a label image, one generated image per object and objects JSON.",
    params=DecomposeParams,
    model_pipelines=("kaizen",),
    analyze=analyze_project,
    image_kinds=("fluorescence",),
    layers=("objects",),
))
