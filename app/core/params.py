"""The base of every pipeline's parameter dataclasses: fields with help text, dict round trips, checks.

A field made with :func:`param` carries ``metadata["help"]`` (the CLI option's help and the GUI
form's tooltip), optionally ``choices`` (a combo box, and a check in :meth:`Params.validate`) and
``basic`` (shown above the form's folded Advanced section).  :meth:`Params.from_dict` reads what
any version wrote: unknown keys are ignored and the names older versions used (``max_epochs``,
``learning_rate``, ``num_threads``) are read as today's (``epochs``, ``lr``, ``threads``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING
from typing import Any, ClassVar, TypeVar

from app.core.errors import UserError

P = TypeVar("P", bound="Params")

# old key -> today's key, for model cards and run.json files written before the names were unified
RENAMED = {"max_epochs": "epochs", "learning_rate": "lr", "num_threads": "threads"}


def param(default: Any = MISSING, help: str = "", choices: tuple[Any, ...] | None = None, basic: bool = False,
          default_factory: Any = MISSING) -> Any:
    """A dataclass field with its help text, the values a form may offer (``choices``) and ``basic``."""
    metadata: dict[str, Any] = {"help": help}
    if choices:
        metadata["choices"] = tuple(choices)
    if basic:
        metadata["basic"] = True
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class Params:
    """Mixin of a parameter dataclass: ``to_dict``/``from_dict`` for JSON and ``validate`` for choices."""

    RENAMED: ClassVar[dict[str, str]] = RENAMED

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the values (tuples as lists), as run.json and model cards store them."""
        return to_dict(self)

    @classmethod
    def from_dict(cls: type[P], values: dict[str, Any] | None) -> P:
        """The params ``values`` describe: old names read as new, unknown keys ignored, lists back to tuples."""
        return from_dict(cls, values or {})

    def validate(self) -> None:
        """Raise UserError naming the parameter whose value is not among its field's ``choices``."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise UserError(f"{f.name} must be one of {', '.join(map(str, choices))}, not {value!r}")


def to_dict(params: Any) -> dict[str, Any]:
    """Plain dict of a parameter dataclass (tuples as lists), for JSON."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items()}


def from_dict(cls: type[P], data: dict[str, Any]) -> P:
    """Rebuild ``cls`` from :func:`to_dict` output of this or an older version (see :data:`RENAMED`)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in data.items():
        new = key if key in names else RENAMED.get(key, key)
        if new in names and (new == key or new not in data):  # today's key wins over an old one
            values[new] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def field_help(cls: type, name: str) -> str:
    """The help text of field ``name`` of the dataclass ``cls`` ("" when it has none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)


__all__ = ["Params", "param", "to_dict", "from_dict", "field_help", "RENAMED"]
