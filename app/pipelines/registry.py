"""The pipelines the app knows, described so that GUI, CLI and batches run them the same way.

A pipeline registers a :class:`PipelineSpec`; the GUI builds its run form from ``params`` (a
dataclass), lists models whose card pipeline is in ``model_pipelines``, and starts
``analyze(project, image_names, params, models)``, a job generator (app.core.jobs) that writes a
run folder in the project and returns its path.  Nothing here imports Qt.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.jobs import Job

# modules that call register() on import; missing ones are skipped (a pipeline not built yet)
PIPELINE_MODULES = ("app.pipelines.brightfield", "app.pipelines.stagetool", "app.pipelines.kaizen")


@dataclass(frozen=True)
class PipelineSpec:
    """What the GUI and batch runner need to know to run one pipeline on project images."""

    name: str
    title: str
    description: str
    params: type
    model_pipelines: tuple[str, ...]
    analyze: Callable[..., Job[Path]]  # (project, image_names, params, models: dict[str, str]) -> run folder
    image_kinds: tuple[str, ...] = field(default_factory=tuple)  # hints: "fluorescence", "brightfield-stack", "section"
    layers: tuple[str, ...] = field(default_factory=tuple)  # result layers it writes (objects.json)


_REGISTRY: dict[str, PipelineSpec] = {}


def register(spec: PipelineSpec) -> PipelineSpec:
    """Add (or replace) a pipeline; called by pipeline packages at import."""
    _REGISTRY[spec.name] = spec
    return spec


def pipelines() -> dict[str, PipelineSpec]:
    """All available pipelines by name, importing the pipeline packages that exist."""
    for module in PIPELINE_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    return dict(_REGISTRY)


def get(name: str) -> PipelineSpec:
    """One pipeline by name; an unknown name is a user error listing the known ones."""
    from app.core.errors import UserError

    known = pipelines()
    if name not in known:
        raise UserError(f"unknown pipeline '{name}'; available: {', '.join(sorted(known)) or 'none'}")
    return known[name]


def params_from_dict(params_type: type, values: dict[str, Any] | None) -> Any:
    """Build a parameters dataclass from saved values, ignoring keys it no longer has."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(params_type)}
    return params_type(**{k: v for k, v in (values or {}).items() if k in names})
