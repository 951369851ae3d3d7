"""The one per-item loop of every pipeline: project runs (the GUI), ``stagescope <pipeline>`` commands and batches.

A pipeline only says how to analyse one item (:class:`app.pipelines.contract.PipelineSpec`); this
module owns what is the same for all of them:

* layout: each item's files in ``<out>/<item name>/`` (a project run's ``runs/<id>/<image>/``),
  written by the spec's ``analyze_one``; batch-wide tables from its ``finish`` in ``<out>/``;
* failure policy: a failing item is recorded (run.json ``failed``) and the loop goes on; the run
  ends "failed" and the failures are reported at the end;
* resume rule: an item is done again only when :func:`fingerprint` (input contents via
  app.core.fingerprint, model weights' sha256, parameters) changed;
* models: loaded once per process or Dask worker (:func:`cached_load`), after their sha256 is checked.

The batch transport (app.batch) dispatches :func:`analyze_item` to threads or Dask workers.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.device import use_threads
from app.core.errors import ModelError, UserError, os_error_message
from app.core.fingerprint import file_fingerprint
from app.core.formats import image_stem, split_scene
from app.core.jobs import Job, Progress
from app.core.modelcard import WEIGHTS_FILE, resolve_model, sha256_file
from app.core.project_edit import entry_metadata
from app.pipelines.contract import Item, PipelineSpec

# ----------------------------------------------------------------------------- items


def image_name(path: Path) -> str:
    """An image's name from its file name (app.core.formats.image_stem: ``a.ome.tif`` -> ``a``, scenes kept)."""
    return image_stem(path)


def image_items(inputs: Sequence[Path]) -> list[Item]:
    """One item per image file; folders expand to their image files (sorted)."""
    from app.core.images import list_images

    return [Item(image_name(file), (str(file.resolve()),)) for path in inputs for file in list_images(Path(path))]


def items_for(spec: PipelineSpec, inputs: Sequence[str | Path | Item]) -> list[Item]:
    """The items of ``inputs`` (spec's ``expand``, default one per image); none, or two sharing a name, is refused."""
    given = list(inputs)
    if given and all(isinstance(p, Item) for p in given):
        items = given  # already expanded (a command that pairs extra inputs itself)
    else:
        items = (spec.expand or image_items)([Path(p) for p in given])
    if not items:
        raise UserError("no images given")
    names = [item.name for item in items]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"several inputs would be written to the same folder: {', '.join(duplicates)}; rename them")
    return items


def project_items(project: Any, image_names: Sequence[str]) -> list[Item]:
    """Project images as items: the image file, and what project.json says of it (pixel size, channels, group)."""
    items = []
    for name in image_names:
        meta = {**entry_metadata(project, name), "group": project.image(name).group}
        items.append(Item(name, (str(Path(project.image_path(name))),), meta=meta))
    return items


def params_dict(params: Any) -> dict[str, Any]:
    """A params dataclass as plain JSON values (tuples as lists), for run.json and fingerprints."""
    values = params.to_dict() if hasattr(params, "to_dict") else dataclasses.asdict(params)
    return json.loads(json.dumps(values, sort_keys=True, default=str))


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelRef:
    """A model as work items carry it: its folder (seen by every worker) and the sha256 of its weights."""

    kind: str
    name: str
    folder: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        """For task.json, run.json and the summary."""
        return {"kind": self.kind, "name": self.name, "folder": self.folder, "weights_sha256": self.sha256}


def check_weights(card: Any) -> None:
    """At the start: the weights file is the one its card describes, else ModelError naming the model folder."""
    path = Path(card.folder) / WEIGHTS_FILE
    try:
        digest = sha256_file(path)
    except OSError as error:
        raise ModelError(f"model folder {card.folder}: cannot read {WEIGHTS_FILE} "
                         f"({error.strerror or error})") from error
    if digest != card.weights_sha256:
        raise ModelError(f"model folder {card.folder}: {WEIGHTS_FILE} does not match its card.json (sha256 "
                         f"{digest[:12]}... instead of {card.weights_sha256[:12]}...): the file is corrupt or was "
                         "replaced; restore it or train the model again")


def resolve_models(spec: PipelineSpec, models: dict[str, str] | None) -> tuple[ModelRef, ...]:
    """Each model kind of ``spec`` as folder + sha256; keys may be kinds or model-card pipelines."""
    by_pipeline = {pipeline: kind for kind, pipeline in spec.models.items()}
    given = {by_pipeline.get(key, key): value for key, value in (models or {}).items() if value}
    unknown = sorted(set(given) - set(spec.models))
    if unknown:
        raise UserError(f"{spec.name} takes models {', '.join(spec.models) or '(none)'}, not {', '.join(unknown)}")
    refs = []
    for kind, pipeline in spec.models.items():
        wanted = given.get(kind) or spec.default_models.get(kind)
        if not wanted:
            raise UserError(f"{spec.name}: no default {kind} model; give --model {kind}=NAME_OR_DIR")
        card = resolve_model(wanted, pipeline=pipeline)
        check_weights(card)
        refs.append(ModelRef(kind, card.name, str(Path(card.folder).resolve()), card.weights_sha256))
    return tuple(refs)


def verify_weights(ref: ModelRef) -> None:
    """Refuse a model whose weights file differs from the digest the run was started with."""
    path = Path(ref.folder) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"model {ref.name!r}: {path} is not reachable from this worker "
                         f"({socket.gethostname()}); model folders must be on a shared or identical path")
    digest = sha256_file(path)
    if digest != ref.sha256:
        raise ModelError(f"model {ref.name!r} ({ref.folder}) changed since the batch started: weights sha256 "
                         f"{digest[:12]}... instead of {ref.sha256[:12]}...")


_MODEL_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()
LOAD_COUNTS: dict[tuple, int] = {}
"""How often each cache key was loaded in this process (tests and the summary check "once per worker")."""


def cached_load(spec: PipelineSpec, refs: Sequence[ModelRef], params: Any) -> tuple[Any, float, bool]:
    """The spec's loaded models, loaded (and verified) once per process for the same models and load params.

    Only the latest set of each pipeline is kept (other models or devices replace it).  Returns
    (loaded, seconds spent loading now, whether this call loaded models).
    """
    values = params_dict(params)
    key = (spec.name, tuple((m.kind, m.folder, m.sha256) for m in refs),
           tuple(json.dumps(values.get(k), default=str) for k in spec.load_key))
    with _CACHE_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key], 0.0, False
        start = time.perf_counter()
        for ref in refs:
            verify_weights(ref)
        loaded = spec.load({m.kind: m.folder for m in refs}, params)
        for other in [k for k in _MODEL_CACHE if k[0] == spec.name]:
            del _MODEL_CACHE[other]  # one loaded set per pipeline: a long GUI session does not pile up models
        _MODEL_CACHE[key] = loaded
        LOAD_COUNTS[key] = LOAD_COUNTS.get(key, 0) + 1
        return loaded, time.perf_counter() - start, bool(refs)


def clear_model_cache() -> None:
    """Forget this process's loaded models (tests; a GUI that wants memory back)."""
    with _CACHE_LOCK:
        _MODEL_CACHE.clear()


def device_label(device: Any) -> str:
    """``cuda:0 (NVIDIA H100 ...)`` or ``cpu (N threads)``, for a torch device or a plain string."""
    text = str(device)
    if text.startswith("cuda"):
        import torch

        index = torch.device(text).index or 0
        return f"{text} ({torch.cuda.get_device_name(index)})"
    if text == "cpu" and "torch" in sys.modules:
        import torch

        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads != 1 else ''})"
    return text



# ----------------------------------------------------------------------------- one item


def fingerprint(pipeline: str, inputs: Sequence[str], models: Sequence[ModelRef],
                params: dict[str, Any]) -> dict[str, Any]:
    """What an item's results depend on (input contents, model sha256, parameters); a rerun redoes it when changed."""
    files = [split_scene(source) for source in inputs]  # a scene (file.czi#scene-2) counts by its file's content
    return {"pipeline": pipeline,
            "inputs": [{**file_fingerprint(file), **({"scene": scene} if scene is not None else {})}
                       for file, scene in files],
            "models": {m.kind: m.sha256 for m in models},
            "params": json.loads(json.dumps(params, sort_keys=True, default=str))}


def resume_values(spec: PipelineSpec, params: Any) -> dict[str, Any]:
    """The params an item's results depend on (the spec's ``resume_params``, else all), for :func:`fingerprint`."""
    values = params_dict(params)
    return values if spec.resume_params is None else {k: values.get(k) for k in spec.resume_params}


def final_params(spec: PipelineSpec, values: dict[str, Any] | Any, loaded: Any) -> Any:
    """The params an item runs with: built from values (or a dataclass), then the spec's ``prepare_params``."""
    params = values if dataclasses.is_dataclass(values) else spec.build_params(values)
    return spec.prepare_params(params, loaded) if spec.prepare_params is not None else params


def with_model_defaults(params: Any, card_params: Any) -> Any:
    """Params where every field left at its dataclass default takes the model card's value.

    A form or batch that passes every field (at its default) must not undo what the card says; the
    CLI, the GUI and batches all pass through here, so they run with the same values.
    """
    if params is None:
        return card_params
    defaults = type(params)()
    changes = {f.name: getattr(card_params, f.name) for f in dataclasses.fields(params)
               if f.init and getattr(params, f.name) == getattr(defaults, f.name) and hasattr(card_params, f.name)}
    return dataclasses.replace(params, **changes)


def outputs_of(folder: Path, names: dict[str, str] | None = None) -> dict[str, Path]:
    """An item folder's files for run.json: ``names`` (key -> file) first, then each file by its name without
    suffixes (objects.json -> "objects")."""
    files: dict[str, Path] = {"folder": folder}
    for key, name in (names or {}).items():
        if (folder / name).exists():
            files[key] = folder / name
    for file in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not file.name.startswith("."):
            files.setdefault(file.name.split(".")[0], file)
    return files


def analyze_item(spec: PipelineSpec, item: Item, folder: Path, loaded: Any, params: Any) -> Job[dict[str, Any]]:
    """Job: ``spec.analyze_one`` on ``item`` into ``folder`` (created); returns its statistics."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    use_threads(getattr(params, "threads", None))  # torch keeps the count per thread: set on the one that works
    stats = yield from spec.analyze_one(item, Path(folder), loaded, params)
    return dict(stats or {})


def publish_item(spec: PipelineSpec, item: Item, folder: Path, loaded: Any, params: Any,
                 force: bool = False) -> Job[dict[str, Any]]:
    """Job: :func:`analyze_item` into a hidden folder beside ``folder``, renamed to ``folder`` when complete.

    So an item's folder holds all its files or does not exist (a failure or a cancel leaves none),
    as in a batch (app.batch.tasks publishes the same way, across workers).  A folder redone keeps
    the user's own files and changed reports (app.core.republish; ``force`` replaces the reports),
    each kept report told to app.core.outputs.collect_kept.
    """
    from app.core.outputs import note_kept
    from app.core.republish import replace_folder

    folder = Path(folder)
    partial = folder.with_name(f".partial-{folder.name}-{secrets.token_hex(4)}")
    try:
        stats = yield from analyze_item(spec, item, partial, loaded, params)
        for kept in replace_folder(partial, folder, force, ".replaced-", spec.redo_drops):
            note_kept(kept.kept, kept.written, kept.reason)
        return stats
    except BaseException:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # made by the run for this item; nothing is published
        raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def error_text(error: BaseException) -> str:
    """A failure as one line: a user error's message, a full disk or denied write naming the path, else the
    exception type and message."""
    if isinstance(error, UserError):
        return str(error)
    return os_error_message(error) or f"{type(error).__name__}: {error}"


# ----------------------------------------------------------------------------- project runs


def analyze_images(run: Any, image_names: Sequence[str], analyze_one: Callable[[str, Path], Job[dict]]) -> Job[Path]:
    """Job: ``analyze_one(name, image_folder)`` for each image of a run, with the one failure policy.

    Each image is marked done as it finishes; a failing image is recorded with its reason and the
    others go on.  The run ends "finished", "failed" (some image failed: raised at the end, a
    :class:`UserError` listing them when every failure was one, else the first unexpected error)
    or "cancelled" (the consumer closed the job).  Returns the run folder.
    """
    status, failures = "failed", []
    try:
        for i, name in enumerate(image_names):
            yield Progress("images", i, len(image_names), name, item="image")
            try:
                outputs = yield from analyze_one(name, run.image_dir(name))
            except (GeneratorExit, KeyboardInterrupt):
                raise
            except Exception as error:  # recorded (project list, the GUI's summary); the others go on
                failures.append((name, error))
                if hasattr(run, "mark_image_failed"):
                    run.mark_image_failed(name, str(error) or type(error).__name__)
                continue
            run.mark_image_done(name, outputs)
        yield Progress("images", len(image_names), len(image_names), "done", item="image")
        status = "finished" if not failures else "failed"
    except GeneratorExit:
        status = "cancelled"
        raise
    finally:
        run.finish(status)
    if failures:
        unexpected = [error for _, error in failures if not isinstance(error, UserError)]
        if unexpected:
            raise unexpected[0]
        listed = "; ".join(f"{name}: {error_text(error)}" for name, error in failures)
        raise UserError(f"{len(failures)} of {len(image_names)} image(s) failed ({listed})") from failures[0][1]
    return Path(run.folder)


def analyze_project(spec: PipelineSpec, project: Any, image_names: Sequence[str], params: Any,
                    models: dict[str, str] | None = None) -> Job[Path]:
    """Job: a new run of ``project`` over ``image_names`` with ``spec``; returns the run folder.

    The same items, models, ``analyze_one`` and ``finish`` as a CLI or batch run, so an image gives
    the same files in ``runs/<id>/<image>/``.
    """
    items = project_items(project, image_names)
    if spec.check is not None:
        spec.check(items, params)
    refs = resolve_models(spec, models)
    loaded, _, _ = cached_load(spec, refs, params)
    params = final_params(spec, params, loaded)
    run = project.new_run(spec.name, params_dict(params), {m.kind: m.to_dict() for m in refs})
    by_name = {item.name: item for item in items}

    def one(name: str, folder: Path) -> Job[dict]:
        stats = yield from publish_item(spec, by_name[name], folder, loaded, params)
        return {**stats, **outputs_of(folder, spec.output_names)}  # a file wins over a statistic of its name

    try:
        folder = yield from analyze_images(run, list(image_names), one)
    finally:
        finished = [name for name in image_names if run.is_done(name)]
        if finished:
            spec.finish(Path(run.folder), finished, params)
    return folder
