"""Each pipeline in the shape a batch task needs: inputs to tasks, models by path, one image into one folder.

An :class:`Adapter` calls the pipeline's own public functions (the same ones its CLI and registry
entry use), so a batch produces the files a local run produces.  Client side: :meth:`expand`
(inputs to ``(name, sources)``), :meth:`resolve_models` (names or folders to :class:`ModelRef`),
:meth:`check_params` and :meth:`finish` (batch-wide outputs such as Stagetool's workbook).  Worker
side: :meth:`load` and :meth:`process`.  ``noop`` reads each image, waits ``seconds`` and writes
its size and checksum: a pipeline for trying a cluster and measuring per-task overhead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from app.batch.tasks import ModelRef, Task, device_label
from app.core.errors import UserError
from app.core.jobs import Progress

OnProgress = Callable[[Progress], None] | None


def image_name(path: Path) -> str:
    """An image's name from its file name, multi-part suffixes (.ome.tif) removed."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpg", ".jpeg"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def image_files(inputs: Sequence[Path]) -> list[tuple[str, tuple[str, ...]]]:
    """One task per image file; folders expand to their image files (sorted)."""
    from app.core.images import list_images

    items = []
    for path in inputs:
        for file in list_images(Path(path)):
            items.append((image_name(file), (str(file.resolve()),)))
    return items


def _drain(job: Any, on_progress: OnProgress = None) -> Any:
    from app.core.jobs import run

    return run(job, on_progress)


def _build(params_type: type, values: dict[str, Any], base: Any = None) -> Any:
    """A parameters dataclass from ``base`` (or defaults) and ``values``; an unknown key is a user error."""
    names = {f.name for f in dataclasses.fields(params_type)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    base = base if base is not None else params_type()
    return dataclasses.replace(base, **values)


def check_weights(card: Any) -> None:
    """At batch start: the weights file is the one its card describes, else ModelError naming the model folder.

    Without this a corrupt file was only noticed by the workers, which blamed a change during the batch.
    """
    from app.core.errors import ModelError
    from app.core.modelcard import WEIGHTS_FILE, sha256_file

    path = Path(card.folder) / WEIGHTS_FILE
    try:
        digest = sha256_file(path)
    except OSError as error:
        raise ModelError(f"model folder {card.folder}: cannot read {WEIGHTS_FILE} ({error.strerror or error})") from error
    if digest != card.weights_sha256:
        raise ModelError(f"model folder {card.folder}: {WEIGHTS_FILE} does not match its card.json (sha256 "
                         f"{digest[:12]}... instead of {card.weights_sha256[:12]}...): the file is corrupt or was "
                         "replaced; restore it or train the model again")


class Adapter:
    """Base adapter: image files in, no models, nothing batch-wide."""

    name = ""
    model_kinds: dict[str, str] = {}  # kind -> model-card pipeline

    def expand(self, inputs: Sequence[Path]) -> list[tuple]:
        """``(name, source files)`` per task, or ``(name, source files, {role: file})`` with extra inputs."""
        return image_files(inputs)

    def default_model(self, kind: str) -> str:
        """The model used when the user names none."""
        raise UserError(f"{self.name}: no default {kind} model; give --model {kind}=NAME_OR_DIR")

    def resolve_models(self, models: dict[str, str] | None) -> tuple[ModelRef, ...]:
        """Each model kind as a folder path + sha256 (client side, before any task is sent)."""
        from app.core.modelcard import resolve_model

        models = dict(models or {})
        unknown = sorted(set(models) - set(self.model_kinds))
        if unknown:
            raise UserError(f"{self.name} takes models {', '.join(self.model_kinds) or '(none)'}, not {', '.join(unknown)}")
        refs = []
        for kind, pipeline in self.model_kinds.items():
            card = resolve_model(models.get(kind) or self.default_model(kind), pipeline=pipeline)
            check_weights(card)
            refs.append(ModelRef(kind, card.name, str(Path(card.folder).resolve()), card.weights_sha256))
        return tuple(refs)

    def check_params(self, params: dict[str, Any]) -> None:
        """Refuse unknown or invalid parameter values before anything is dispatched."""

    modules: tuple[str, ...] = ()  # imported by warm_up on every worker before the first task

    def warm_up(self) -> float:
        """Import what :meth:`process` needs (on a worker, before tasks arrive); returns the seconds it took."""
        import importlib

        start = time.perf_counter()
        for module in self.modules:
            importlib.import_module(module)
        return time.perf_counter() - start

    def load_key(self, params: dict[str, Any]) -> Any:
        """The parameters that change what :meth:`load` returns (part of the model-cache key)."""
        return params.get("device", "auto")

    def load(self, refs: dict[str, ModelRef], params: dict[str, Any]) -> Any:
        """The pipeline's models, ready to predict (worker side, once per worker)."""
        return None

    def device_of(self, loaded: Any) -> str:
        """Where the loaded models compute, for the summary."""
        return "cpu"

    def process(self, task: Task, loaded: Any, folder: Path, on_progress: OnProgress = None) -> dict[str, Any]:
        """Analyse one image, writing every result file into ``folder``; returns small statistics.

        ``on_progress`` gets the pipeline job's events (it may raise to stop the work).
        """
        raise NotImplementedError

    def finish(self, out: Path, names: Sequence[str]) -> dict[str, str]:
        """Batch-wide outputs built from the finished images' folders (client side)."""
        return {}


class NoopAdapter(Adapter):
    """Reads the image header and bytes, waits ``seconds``, writes its size and sha256 (overhead, fault tests)."""

    name = "noop"
    modules = ("app.core.images", "tifffile")

    def check_params(self, params: dict[str, Any]) -> None:
        unknown = sorted(set(params) - {"seconds"})
        if unknown:
            raise UserError(f"noop takes only the parameter 'seconds', not {', '.join(unknown)}")
        float(params.get("seconds", 0.0))

    def process(self, task: Task, loaded: Any, folder: Path, on_progress: OnProgress = None) -> dict[str, Any]:
        from app.core.images import open_image

        source = Path(task.sources[0])
        with open_image(source) as image:
            shape = list(image.info.shape)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        (folder / "started.json").write_text(json.dumps({"image": task.name}), encoding="utf-8")
        seconds = float(task.params.get("seconds", 0.0))
        steps = max(1, int(seconds / 0.1))
        for step in range(steps):  # in small steps, so progress shows and a cancel is seen
            if on_progress is not None:
                on_progress(Progress("wait", step, steps))
            time.sleep(seconds / steps)
        (folder / "result.json").write_text(json.dumps({"image": task.name, "shape": shape, "sha256": digest}),
                                            encoding="utf-8")
        return {"shape": shape}


class KaizenAdapter(Adapter):
    """Kaizen decomposition: per image its label TIFF, object stack, objects JSON (as ``kaizen segment``)."""

    name = "kaizen"
    model_kinds = {"kaizen": "kaizen"}
    modules = ("app.pipelines.kaizen.decompose", "app.pipelines.kaizen.model", "app.pipelines.kaizen.outputs",
               "app.core.results", "tifffile")

    def default_model(self, kind: str) -> str:
        from app.pipelines.kaizen.model import DEFAULT_MODEL

        return DEFAULT_MODEL

    def check_params(self, params: dict[str, Any]) -> None:
        from app.pipelines.kaizen.params import DecomposeParams

        _build(DecomposeParams, params)

    def load(self, refs: dict[str, ModelRef], params: dict[str, Any]) -> Any:
        from app.pipelines.kaizen.model import load_kaizen_model
        from app.pipelines.kaizen.train import resolve_device

        return load_kaizen_model(refs["kaizen"].folder, device=resolve_device(params.get("device", "auto")))

    def device_of(self, loaded: Any) -> str:
        return device_label(next(loaded.network.parameters()).device)

    def process(self, task: Task, loaded: Any, folder: Path, on_progress: OnProgress = None) -> dict[str, Any]:
        from app.core.results import write_objects
        from app.pipelines.kaizen.decompose import decompose_job, read_gray
        from app.pipelines.kaizen.outputs import write_outputs

        params = _build(type(loaded.defaults), task.params, base=loaded.defaults)
        image = read_gray(task.sources[0])
        result = _drain(decompose_job(image, loaded, params, name=task.name), on_progress)
        write_outputs(folder, task.name, result, source=task.sources[0])
        write_objects(folder / "objects.json", task.name, "kaizen", {"objects": [o.to_dict() for o in result.objects]})
        return {"objects": len(result.objects), "diameter": result.diameter}


class BrightfieldAdapter(Adapter):
    """Brightfield nuclei: a task is one field (folder of planes or a stack file); labels TIFF, CSV, objects JSON."""

    name = "brightfield"
    model_kinds = {"brightfield": "brightfield"}
    modules = ("app.pipelines.brightfield.predict", "app.core.images", "tifffile")

    def default_model(self, kind: str) -> str:
        from app.pipelines.brightfield.predict import DEFAULT_MODEL

        return DEFAULT_MODEL

    def expand(self, inputs: Sequence[Path]) -> list[tuple]:
        from app.pipelines.brightfield.predict import collect_fields

        return [(f.name, tuple(str(Path(p).resolve()) for p in f.planes),
                 {"fluorescence": str(Path(f.fluo).resolve())} if f.fluo else {}) for f in collect_fields(list(inputs))]

    def check_params(self, params: dict[str, Any]) -> None:
        from app.pipelines.brightfield.params import SegmentParams

        _build(SegmentParams, params)

    def load(self, refs: dict[str, ModelRef], params: dict[str, Any]) -> Any:
        from app.pipelines.brightfield.predict import BrightfieldModel

        return BrightfieldModel.load(refs["brightfield"].folder)

    def device_of(self, loaded: Any) -> str:
        return device_label(next(loaded.net.parameters()).device)

    def process(self, task: Task, loaded: Any, folder: Path, on_progress: OnProgress = None) -> dict[str, Any]:
        from app.core.images import write_tiff
        from app.pipelines.brightfield.predict import segment, write_csv, write_objects_json
        from app.pipelines.brightfield.stack import load_stack, read_gray

        from app.pipelines.brightfield import with_model_defaults

        # values left at their defaults (the GUI's run queue sends every field) keep the model card's
        params = with_model_defaults(_build(type(loaded.segment), task.params), loaded.segment)
        stack = load_stack([Path(p) for p in task.sources] if len(task.sources) > 1 else Path(task.sources[0]))
        fluo = read_gray(Path(task.extras["fluorescence"])) if task.extras.get("fluorescence") else None
        result = _drain(segment(loaded, stack, params, fluo, name=task.name), on_progress)
        write_tiff(folder / "labels.tif", result.labels, axes="YX")
        write_csv(folder / "nuclei.csv", result.rows)
        write_objects_json(folder / "objects.json", result, task.name, loaded)
        return {"nuclei": result.count}


class StagetoolAdapter(Adapter):
    """Stagetool sections: predictions, objects, tables and workbook per section; the batch workbook at the end."""

    name = "stagetool"
    model_kinds = {"tubules": "stagetool-tubules", "cells": "stagetool-cells"}
    modules = ("app.pipelines.stagetool.predict", "app.pipelines.stagetool.batch", "app.pipelines.stagetool.report_excel")

    def expand(self, inputs: Sequence[Path]) -> list[tuple]:
        """Section files as ``stagetool analyze`` takes them (truth and label files in folders left out)."""
        from app.pipelines.stagetool.batch import section_files

        return [(image_name(p), (str(p.resolve()),)) for p in section_files(list(inputs))]

    def default_model(self, kind: str) -> str:
        from app.pipelines.stagetool.loading import DEMO_MODELS

        return DEMO_MODELS[kind]

    def check_params(self, params: dict[str, Any]) -> None:
        from app.pipelines.stagetool.params import AnalyzeParams

        _build(AnalyzeParams, params).validate()

    def load(self, refs: dict[str, ModelRef], params: dict[str, Any]) -> Any:
        from app.core.device import use_threads
        from app.pipelines.stagetool.predict import load_model

        device = params.get("device", "auto")
        use_threads(int(params.get("threads", 0) or 0))
        return {kind: load_model(refs[kind].folder, kind, device) for kind in ("tubules", "cells")}

    def device_of(self, loaded: Any) -> str:
        return device_label(loaded["tubules"].device)

    def process(self, task: Task, loaded: Any, folder: Path, on_progress: OnProgress = None) -> dict[str, Any]:
        from app.core.edits import edits_for_image, read_edits
        from app.pipelines.stagetool.batch import write_section_outputs
        from app.pipelines.stagetool.params import AnalyzeParams
        from app.pipelines.stagetool.predict import analyze_section

        params = _build(AnalyzeParams, task.params)
        _drain(analyze_section(task.sources[0], folder, loaded["tubules"], loaded["cells"], params, name=task.name),
               on_progress)
        summary = write_section_outputs(folder, edits_for_image(read_edits(Path(task.out)), task.name))
        return {"tubules": summary.get("n_tubules"), "cells": summary.get("n_cells")}

    def finish(self, out: Path, names: Sequence[str]) -> dict[str, str]:
        from app.pipelines.stagetool.batch import write_batch_outputs

        workbook = write_batch_outputs(out, list(names))
        return {"workbook": str(workbook)} if workbook else {}


ADAPTERS: dict[str, Adapter] = {a.name: a for a in (NoopAdapter(), KaizenAdapter(), BrightfieldAdapter(),
                                                       StagetoolAdapter())}


def get_adapter(pipeline: str) -> Adapter:
    """The adapter of a pipeline; an unknown name is a user error listing the known ones."""
    if pipeline not in ADAPTERS:
        raise UserError(f"batch: unknown pipeline '{pipeline}'; available: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[pipeline]
