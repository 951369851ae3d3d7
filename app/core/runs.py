"""A run folder ``runs/<id>/`` of a project: run.json (what ran, with what, which images are done) and outputs.

A restarted batch asks :meth:`Run.is_done` and skips what a crash left finished; every write is atomic.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from app import __version__
from app.core.atomic import atomic_write_json, read_json
from app.core.errors import ProjectError
from app.core.project_schema import check_name, now_iso

RUN_FILE = "run.json"
RUN_SCHEMA_VERSION = 1
RUN_STATUSES = ("running", "finished", "failed", "cancelled")


def jsonable(value: Any) -> Any:
    """Dataclasses (a pipeline's parameters) as dicts; everything else unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def model_refs(models: Any) -> Any:
    """Model ids for run.json: objects with ``model_id()`` (a ModelCard) become its short dict."""
    if models is None:
        return []
    if hasattr(models, "model_id"):
        return [models.model_id()]
    if isinstance(models, Mapping):
        return {key: model_refs(value)[0] if hasattr(value, "model_id") else value
                for key, value in models.items()}
    if isinstance(models, (list, tuple)):
        return [m.model_id() if hasattr(m, "model_id") else m for m in models]
    return models


def new_run_id() -> str:
    """A unique id that sorts by start time: UTC ``YYYYmmdd-HHMMSS-mmm`` + 6 random hex digits."""
    now = datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"


@dataclass
class Run:
    """One pipeline run in ``runs/<id>/``: what ran, with what, and which images are done.

    Outputs of an image are written (atomically) into :attr:`folder` first, then
    :meth:`mark_image_done` records them; a restarted batch asks :meth:`is_done` and skips.
    """

    folder: Path
    id: str
    pipeline: str
    parameters: dict[str, Any] = field(default_factory=dict)
    models: Any = field(default_factory=list)
    started: str = ""
    finished: str | None = None
    status: str = "running"
    app_version: str = __version__
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The run.json file."""
        return self.folder / RUN_FILE

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in run.json."""
        return {
            "schema_version": RUN_SCHEMA_VERSION, "id": self.id, "pipeline": self.pipeline,
            "parameters": self.parameters, "models": self.models, "app_version": self.app_version,
            "started": self.started, "finished": self.finished, "status": self.status,
            "results": self.results, "failed": self.failed,
        }

    def save(self) -> None:
        """Write run.json atomically."""
        atomic_write_json(self.path, self.to_dict())

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Run:
        """Read ``folder/run.json``; a missing or corrupt file raises ProjectError naming it."""
        folder = Path(folder)
        path = folder / RUN_FILE
        data = read_json(path, ProjectError, "run file", missing=f"no run found: {path} does not exist")
        if not isinstance(data, dict) or "pipeline" not in data:
            raise ProjectError(f"run file {path} is not a Stagescope run (no 'pipeline')")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > RUN_SCHEMA_VERSION:
            raise ProjectError(f"run file {path} has schema {version!r}, newer than this app reads; "
                               "update Stagescope")
        return cls(
            folder=folder, id=data.get("id", folder.name), pipeline=data["pipeline"],
            parameters=data.get("parameters", {}), models=data.get("models", []),
            started=data.get("started", ""), finished=data.get("finished"),
            status=data.get("status", "running"), app_version=data.get("app_version", ""),
            results=data.get("results", {}), failed=data.get("failed", {}),
        )

    def image_dir(self, image_name: str) -> Path:
        """A folder for one image's outputs inside the run (created)."""
        folder = self.folder / check_name(image_name)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _relative(self, value: Any) -> Any:
        """Paths inside the run folder as relative posix strings, so the project can move."""
        if isinstance(value, os.PathLike):
            path = Path(value)
            try:
                return path.absolute().relative_to(self.folder.absolute()).as_posix()
            except ValueError:
                return os.fspath(path)
        if isinstance(value, Mapping):
            return {key: self._relative(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._relative(item) for item in value]
        return value

    def mark_image_done(self, image_name: str, outputs: Mapping[str, Any] | None = None,
                        source: Mapping[str, Any] | None = None) -> None:
        """Record that ``image_name`` is finished with its ``outputs`` (files, counts) and save.

        ``source``: the input's fingerprint (app.core.fingerprint), so a rerun sees a changed input.
        """
        self.results[image_name] = {"finished": now_iso(), "outputs": self._relative(dict(outputs or {}))}
        if source is not None:
            self.results[image_name]["source"] = dict(source)
        self.failed.pop(image_name, None)
        self.save()

    def mark_image_failed(self, image_name: str, message: str) -> None:
        """Record that ``image_name`` failed (it is retried on restart) and save."""
        self.results.pop(image_name, None)
        self.failed[image_name] = str(message)
        self.save()

    def is_done(self, image_name: str) -> bool:
        """Whether ``image_name`` finished in this run (a restarted batch skips it)."""
        return image_name in self.results

    def source_of(self, image_name: str) -> dict[str, Any] | None:
        """The input fingerprint recorded with a finished image (None when none was recorded)."""
        value = self.results.get(image_name, {}).get("source")
        return value if isinstance(value, dict) else None

    def output_path(self, image_name: str, key: str) -> Path | None:
        """Absolute path of a recorded output file of a finished image, or None if not recorded."""
        value = self.results.get(image_name, {}).get("outputs", {}).get(key)
        if not isinstance(value, str):
            return None
        return self.folder / value

    def finish(self, status: str = "finished") -> None:
        """Close the run with ``status`` (finished, failed or cancelled) and the time, and save."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, not {status!r}")
        self.status, self.finished = status, now_iso()
        self.save()

    def resume(self) -> None:
        """Mark a stopped run as running again (its done images stay done) and save."""
        self.status, self.finished = "running", None
        self.save()
