"""The one description a pipeline fills completely, so project runs, the CLI and Dask batches run it alike.

A pipeline package builds a :class:`PipelineSpec` and hands it to ``app.pipelines.registry.register``.
Everything outside its folder reads that spec: the runner (app.pipelines.runner) expands inputs to
:class:`Item` s, loads the models once per process (``load``), calls ``analyze_one`` per item into
that item's folder and ``finish`` once at the end; the GUI builds forms from ``params`` and colours
from ``layers``; demo and self-test take ``sample`` and ``quick_params``; the model library and the
training wizard read ``models`` and ``trainers``.  Nothing here imports torch, Qt or dask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from app.core.errors import UserError
from app.core.jobs import Job


@runtime_checkable
class LoadedModel(Protocol):
    """A model ready to predict: its card (app.core.modelcard.ModelCard) and the torch device it computes on."""

    card: Any
    device: Any


@dataclass(frozen=True)
class Item:
    """One unit of work (an image, a brightfield field, a section): its name and its input files.

    ``name`` is the item's folder in the results; ``sources`` are read by ``analyze_one`` and count for
    resuming (their content fingerprint); ``extras`` name further inputs by role (a field's
    ``fluorescence`` image); ``meta`` carries what a project knows of the image (pixel size, channel
    names, group) and does not count for resuming.
    """

    name: str
    sources: tuple[str, ...]
    extras: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def inputs(self) -> tuple[str, ...]:
        """Every input file (sources, then extras), for the resume fingerprint."""
        return (*self.sources, *self.extras.values())


@dataclass(frozen=True)
class Layer:
    """A result layer the pipeline writes into objects.json, with how the viewer draws it (order: bottom first)."""

    name: str
    colour: str = "#ffd700"
    order: int = 0


@dataclass(frozen=True)
class Sample:
    """Which image of the sample project the demo and self-test run the pipeline on.

    ``group``: the project group; ``contains``: text in the image name ("" = any image of the group).
    """

    group: str
    contains: str = ""


@dataclass(frozen=True)
class TrainerSpec:
    """How to train one kind of model: ``train(sources, params, out_dir, resume=False,
    validation_fraction=0.2) -> Job[Path]`` writes the model folder ``out_dir`` and returns it."""

    model_pipeline: str
    title: str
    params: type
    train: Callable[..., Job[Path]]
    description: str = ""


def _no_finish(out: Path, names: Sequence[str], params: Any, force: bool = False,
               skipped: Sequence[str] = ()) -> dict[str, Path]:
    return {}


def _default_load(folders: dict[str, str], params: Any) -> Any:
    return None


def _cpu(loaded: Any) -> str:
    return "cpu"


@dataclass(frozen=True)
class PipelineSpec:
    """Everything about one pipeline that GUI, CLI, batches, demo and self-test need.

    Per item, ``analyze_one(item, out_folder, loaded, params) -> Job[dict]`` writes every result file
    of ``item`` into ``out_folder`` (which exists and is the item's own folder) and returns small
    statistics (numbers, strings); the runner records the folder's files in run.json by the keys of
    ``output_names``, and every other file by its name without suffixes (objects.json -> "objects").
    """

    name: str
    title: str
    description: str
    params: type  # a dataclass: the GUI form and the CLI options are built from its fields
    analyze_one: Callable[..., Job[dict]] | None = None
    # model kind -> model-card pipeline it needs, and the model used when the user names none
    models: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    default_models: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    load: Callable[[dict[str, str], Any], Any] = _default_load  # (kind -> model folder, params) -> loaded models
    load_key: tuple[str, ...] = ("device",)  # params that change what ``load`` returns (part of the cache key)
    # params that change an item's results (the resume fingerprint); None: all of them.  Others only
    # change what ``finish`` writes, so a rerun with new ones rewrites reports without analysing again
    resume_params: tuple[str, ...] | None = None
    device_of: Callable[[Any], str] = _cpu  # where the loaded models compute, in words, for summaries
    expand: Callable[[Sequence[Path]], list[Item]] | None = None  # inputs -> items (default: one per image file)
    check: Callable[[Sequence[Item], Any], None] | None = None  # refuse bad input before any model loads
    # (out, finished item names, params, force, skipped) -> tables/workbooks over the items; a table the
    # user changed is kept (app.core.outputs) unless force; ``skipped``: items a rerun found done before
    # (their reports may need rewriting with the current edits)
    finish: Callable[..., dict[str, Path]] = _no_finish
    prepare_params: Callable[[Any, Any], Any] | None = None  # (params, loaded) -> params (e.g. model defaults)
    warm_modules: tuple[str, ...] = ()  # imported on every Dask worker before its first task
    image_kinds: tuple[str, ...] = ()  # hints: "fluorescence", "brightfield-stack", "section"
    layers: tuple[Layer, ...] = ()
    trainers: dict[str, TrainerSpec] = field(default_factory=dict, compare=False, hash=False)
    sample: Sample | None = None
    # (sample project, demo folder) -> files a user should open: the pipeline on the sample with shipped models
    demo: Callable[[Any, Path], list[str]] | None = field(default=None, compare=False, hash=False)
    quick_params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    hidden: bool = False  # not offered in the GUI (the ``noop`` cluster probe)
    # item key -> file name in the item's folder, for run.json when the name alone does not say it
    output_names: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    # item-folder files written after the analysis (an evaluation of its results) that a redone item makes
    # stale: dropped with the old set, while the user's own files there are kept (app.core.republish)
    redo_drops: tuple[str, ...] = ()
    # ``analyze(project, image_names, params, models) -> Job[run folder]``: a project run; left None (the
    # norm), registry.register binds app.pipelines.runner.analyze_project to the spec; tests' fakes give their own
    analyze: Callable[..., Job[Path]] | None = field(default=None, compare=False, hash=False)
    module: str = ""  # the module that registered it (imported by Dask workers that do not know it yet)

    def __post_init__(self) -> None:
        layers = tuple(layer if isinstance(layer, Layer) else Layer(str(layer), order=i)
                       for i, layer in enumerate(self.layers))
        object.__setattr__(self, "layers", layers)
        if not self.module:
            source = self.analyze_one or self.analyze
            object.__setattr__(self, "module", getattr(source, "__module__", "") or "")

    @property
    def model_pipelines(self) -> tuple[str, ...]:
        """The model-card pipelines this pipeline's models come from (model library, training wizard)."""
        return tuple(self.models.values())

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Result layers in drawing order."""
        return tuple(layer.name for layer in sorted(self.layers, key=lambda layer: layer.order))

    def layer_colours(self) -> dict[str, str]:
        """Layer name -> colour (#rrggbb) for the viewer."""
        return {layer.name: layer.colour for layer in self.layers}

    def build_params(self, values: dict[str, Any] | None = None, base: Any = None) -> Any:
        """The params dataclass from ``base`` (or defaults) and ``values``; an unknown key is a UserError."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(self.params) if f.init}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(base if base is not None else self.params(), **values)
