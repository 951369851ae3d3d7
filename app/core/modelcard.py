"""Model folders: ``card.json`` (what the model is, how it was trained, sha256 of its weights) + ``weights.pt``.

A model is a folder in the bundled ``models/`` or the user's models folder (see
:mod:`app.core.paths`).  ``weights.pt`` is a plain ``state_dict`` saved with ``torch.save`` and
loaded with ``weights_only=True``; its sha256 is recorded in the card and checked before loading,
so a changed or truncated file is refused.  :meth:`ModelCard.check_fits` refuses a model that does
not fit the pipeline or image, with a message that says why.

torch is imported only by the functions that touch weights, so listing models stays cheap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app import __version__
from app.core.atomic import atomic_path, atomic_write_json, read_json
from app.core.errors import ModelError
from app.core.paths import bundled_models_dir, user_models_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.pt"
CARD_SCHEMA_VERSION = 1
_MODEL_PIPELINES: list[str] = []  # filled by app.pipelines.registry.register: core names no pipeline


def register_model_pipeline(*names: str) -> None:
    """Make model-card pipeline names known (each registered pipeline's models and trainers)."""
    for name in names:
        if name and name not in _MODEL_PIPELINES:
            _MODEL_PIPELINES.append(name)


def model_pipelines() -> tuple[str, ...]:
    """The model-card pipeline names the registered pipelines use, in registration order."""
    return tuple(_MODEL_PIPELINES)


def _known(pipeline: str) -> bool:
    """Whether a card's pipeline is one a registered pipeline uses (any name while none registered: core alone)."""
    return bool(pipeline) and (not _MODEL_PIPELINES or pipeline in _MODEL_PIPELINES)
WEIGHT_DTYPES = ("float16", "float32")
_REQUIRED = ("name", "pipeline", "architecture", "input_channels")


def _now_iso() -> str:
    from datetime import datetime

    return datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass(kw_only=True)
class ModelCard:
    """What a model is and how it was made; stored as card.json beside weights.pt.

    ``channel_meaning`` says what each input plane is (z offsets in µm for brightfield, stain
    names otherwise); ``metrics`` maps a metric set to a dict that includes the data it was
    measured on (``{"val": {"data": "...", "AP50": 0.8}}``); ``extra`` holds pipeline-specific
    settings needed to rebuild the network.  ``folder`` is where the card was loaded from (not
    stored).
    """

    schema_version: int = CARD_SCHEMA_VERSION
    name: str
    pipeline: str
    architecture: str
    backbone: str | None = None
    classes: list[str] = field(default_factory=list)
    input_channels: int = 1
    channel_meaning: list[Any] = field(default_factory=list)
    pixel_size_um: float | None = None
    normalisation: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now_iso)
    app_version: str = __version__
    weights_sha256: str = ""
    weights_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in card.json (without ``folder``)."""
        data = dataclasses.asdict(self)
        data.pop("folder")
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], folder: Path | None = None) -> ModelCard:
        """Build a card from card.json's dict; a missing or wrong field raises ModelError naming ``folder``."""
        where = f"model card in {folder}" if folder is not None else "model card"
        if not isinstance(data, Mapping):
            raise ModelError(f"{where} is corrupt: expected a JSON object")
        version = data.get("schema_version", CARD_SCHEMA_VERSION)
        if not isinstance(version, int) or version > CARD_SCHEMA_VERSION:
            raise ModelError(f"{where} has schema {version!r}, newer than this app reads "
                             f"({CARD_SCHEMA_VERSION}); update Stagescope")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ModelError(f"{where} is incomplete: no {', '.join(repr(m) for m in missing)}")
        known = {f.name for f in dataclasses.fields(cls)} - {"folder"}
        unknown = sorted(set(data) - known)
        if unknown:
            log.warning("%s: ignoring unknown fields %s", where, unknown)
        card = cls(**{key: value for key, value in data.items() if key in known}, folder=folder)
        card.validate(where)
        return card

    def validate(self, where: str | None = None) -> None:
        """Check the fields' values; raises ModelError saying which one is wrong."""
        where = where or f"model card {self.name!r}"
        if not isinstance(self.pipeline, str) or not _known(self.pipeline):
            raise ModelError(f"{where}: unknown pipeline {self.pipeline!r} (known: {', '.join(model_pipelines())})")
        if isinstance(self.input_channels, bool) or not isinstance(self.input_channels, int) \
                or self.input_channels < 1:
            raise ModelError(f"{where}: input_channels must be a positive integer, not {self.input_channels!r}")
        if self.channel_meaning and len(self.channel_meaning) != self.input_channels:
            raise ModelError(f"{where}: channel_meaning has {len(self.channel_meaning)} entries "
                             f"for {self.input_channels} input channels")
        if self.weights_dtype not in WEIGHT_DTYPES:
            raise ModelError(f"{where}: weights_dtype must be float16 or float32, not {self.weights_dtype!r}")
        if not isinstance(self.classes, list) or not all(isinstance(c, str) for c in self.classes):
            raise ModelError(f"{where}: classes must be a list of names")

    def model_id(self) -> dict[str, Any]:
        """A short reference to this exact model, for run.json and reports."""
        ref = {"name": self.name, "pipeline": self.pipeline, "weights_sha256": self.weights_sha256}
        if self.folder is not None:
            ref["folder"] = str(self.folder)
        return ref

    def check_fits(
        self,
        pipeline: str | None = None,
        n_channels: int | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        """Raise ModelError saying why this model cannot serve ``pipeline`` on an image with ``n_channels``.

        ``classes``, when given, must equal the model's classes in the same order (class indices
        are positions).
        """
        if pipeline is not None and pipeline != self.pipeline:
            raise ModelError(f"model {self.name!r} is a {self.pipeline} model, not a {pipeline} model")
        if n_channels is not None and n_channels != self.input_channels:
            z_offsets = bool(self.channel_meaning) and all(
                isinstance(m, (int, float)) and not isinstance(m, bool) for m in self.channel_meaning)
            word = "input planes" if z_offsets else "input channels"  # numbers in channel_meaning are z offsets
            meaning = f" ({', '.join(str(m) for m in self.channel_meaning)})" if self.channel_meaning else ""
            raise ModelError(f"model {self.name!r} expects {self.input_channels} {word}{meaning}, "
                             f"the image has {n_channels}")
        if classes is not None and list(classes) != list(self.classes):
            raise ModelError(_classes_mismatch(self.name, list(self.classes), list(classes)))


def _classes_mismatch(name: str, have: list[str], want: list[str]) -> str:
    """Say how a model's classes differ from the ones a task needs."""
    if sorted(have) == sorted(want):
        return f"model {name!r} has the classes {have} in a different order than the task's {want}"
    parts = []
    missing = [c for c in want if c not in have]
    extra = [c for c in have if c not in want]
    if missing:
        parts.append(f"lacks {missing}")
    if extra:
        parts.append(f"has {extra} that the task does not know")
    return f"model {name!r} was trained for other classes: it {' and '.join(parts)}"


# ----------------------------------------------------------------------------- saving, loading


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _clean_state_dict(state_dict: Any, half: bool) -> dict[str, Any]:
    """A CPU copy of a state_dict (or a module's), floating tensors in fp16 when ``half``.

    Tensors are cloned so ``torch.save`` stores only their own data, not a larger shared storage.
    """
    import torch

    if isinstance(state_dict, torch.nn.Module):
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"save_model needs a state_dict (a mapping), not {type(state_dict).__name__}")
    clean: dict[str, Any] = {}
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().to("cpu")
            if half and value.is_floating_point():
                value = value.to(torch.float16)
            value = value.clone().contiguous()
        clean[str(key)] = value
    return clean


def save_model(
    folder: str | os.PathLike[str],
    card: ModelCard,
    state_dict: Mapping[str, Any] | torch.nn.Module,
    half: bool = False,
) -> ModelCard:
    """Write ``weights.pt`` then ``card.json`` (with the weights' sha256) into ``folder``, atomically.

    ``half=True`` stores floating tensors as float16 (half the file; loaded back as float32).
    Returns the card as written (``weights_sha256``, ``weights_dtype`` and ``folder`` filled in).
    """
    import torch

    folder = Path(folder)
    card.validate()
    clean = _clean_state_dict(state_dict, half)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        torch.save(clean, tmp)
        sha = sha256_file(tmp)
    written = dataclasses.replace(card, weights_sha256=sha, weights_dtype="float16" if half else "float32",
                                  folder=folder)
    atomic_write_json(folder / CARD_FILE, written.to_dict())
    return written


def load_model_card(folder: str | os.PathLike[str]) -> ModelCard:
    """Read ``folder/card.json``; a missing folder or card, or a corrupt one, raises ModelError naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {folder}")
    return ModelCard.from_dict(_card_data(folder), folder=folder)


def _card_data(folder: Path) -> Any:
    """The parsed card.json of a model folder, not yet checked; ModelError when missing or not JSON."""
    return read_json(folder / CARD_FILE, ModelError, "the model card",
                     missing=f"{folder} is not a model folder: it has no {CARD_FILE}")


def load_state_dict(folder: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load ``folder/weights.pt`` after checking its sha256 against the card; floating tensors as float32.

    The bytes that were hashed are the bytes that are loaded (``weights_only=True``).
    """
    import torch

    card = load_model_card(folder)
    path = Path(folder) / WEIGHTS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"model folder {folder} has no {WEIGHTS_FILE}") from exc
    if sha256_bytes(data) != card.weights_sha256:
        raise ModelError(f"weights do not match the card: file changed or corrupt ({path})")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ModelError(f"cannot load the weights {path}: {exc}") from exc
    if not isinstance(state, Mapping):
        raise ModelError(f"{path} does not hold a state_dict (found {type(state).__name__})")
    return {key: value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value
            for key, value in state.items()}


load_weights = load_state_dict
"""Alias: the name the planned core API used."""


def load_model(
    folder: str | os.PathLike[str],
    pipeline: str | None = None,
    n_channels: int | None = None,
    classes: Sequence[str] | None = None,
    map_location: Any = "cpu",
) -> tuple[ModelCard, dict[str, Any]]:
    """Card and checked weights of a model, refusing one that does not fit before touching the weights."""
    card = load_model_card(folder)
    card.check_fits(pipeline=pipeline, n_channels=n_channels, classes=classes)
    return card, load_state_dict(folder, map_location=map_location)


# ------------------------------------------------------------------------------------ discovery


def model_dirs() -> list[Path]:
    """Folders searched for models, in priority order: the user's models, then the bundled ones."""
    return [user_models_dir(), bundled_models_dir()]


def _card_folders(root: Path, depth: int = 2) -> list[Path]:
    """Folders under ``root`` (up to ``depth`` levels down) that contain a card.json."""
    if depth == 0 or not root.is_dir():
        return []
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (child / CARD_FILE).is_file():
            found.append(child)
        else:
            found.extend(_card_folders(child, depth - 1))
    return found


def _names_another(data: Any, key: str, wanted: str | None) -> bool:
    """Whether a parsed card names a ``key`` (pipeline, name) other than ``wanted`` (then it is passed over unchecked)."""
    value = data.get(key) if isinstance(data, dict) else None
    return wanted is not None and isinstance(value, str) and value != wanted


def find_models(pipeline: str | None = None, dirs: Iterable[str | os.PathLike[str]] | None = None,
                name: str | None = None) -> list[ModelCard]:
    """Cards of the models in ``dirs`` (default :func:`model_dirs`), optionally of one pipeline or name.

    Listed in search order (user models first).  Unreadable cards are skipped and logged, so one
    broken folder does not hide the others; cards of another pipeline or name are not read at all
    (in a script that imported one pipeline, the others' cards would not validate).
    """
    if pipeline is not None and not _known(pipeline):
        raise ValueError(f"unknown pipeline {pipeline!r} (known: {', '.join(model_pipelines())})")
    cards = []
    for root in (model_dirs() if dirs is None else [Path(d) for d in dirs]):
        for folder in _card_folders(Path(root)):
            try:
                data = _card_data(folder)
                if _names_another(data, "pipeline", pipeline) or _names_another(data, "name", name):
                    continue
                card = ModelCard.from_dict(data, folder=folder)
            except ModelError as exc:
                log.warning("skipping model: %s", exc)
                continue
            if pipeline is None or card.pipeline == pipeline:
                cards.append(card)
    return cards


def _looks_like_path(text: str | os.PathLike[str]) -> bool:
    """A Path object, a string with a separator, or a model folder here is a path rather than a name."""
    if isinstance(text, os.PathLike):
        return True
    return "/" in text or os.sep in text or (Path(text) / CARD_FILE).is_file()


def resolve_model(
    name_or_path: str | os.PathLike[str],
    pipeline: str | None = None,
    dirs: Iterable[str | os.PathLike[str]] | None = None,
) -> ModelCard:
    """The card of a model given by folder path or by name, checked to be a ``pipeline`` model.

    A name is looked up in ``dirs`` (default :func:`model_dirs`); the first folder that holds it
    wins (user models shadow bundled ones), and two models of that name in one folder is an error.
    """
    if _looks_like_path(name_or_path):
        card = load_model_card(name_or_path)
        card.check_fits(pipeline=pipeline)
        return card
    roots = model_dirs() if dirs is None else [Path(d) for d in dirs]
    for root in roots:
        matches = [card for card in find_models(dirs=[root], name=str(name_or_path)) if card.name == name_or_path]
        if len(matches) > 1:
            folders = ", ".join(str(card.folder) for card in matches)
            raise ModelError(f"several models are named {name_or_path!r} ({folders}); give the folder instead")
        if matches:
            matches[0].check_fits(pipeline=pipeline)
            return matches[0]
    available = ", ".join(sorted({card.name for card in find_models(pipeline, dirs=roots)})) or "none"
    what = f"{pipeline} model" if pipeline else "model"
    raise ModelError(f"no {what} named {name_or_path!r} (available: {available}; "
                     f"searched {', '.join(str(r) for r in roots)})")
