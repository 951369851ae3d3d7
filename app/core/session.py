"""What a viewing session shows: the open project, the current image, the shown run and the selection.

One small Qt-free state object (napari's ``ViewerModel`` idea): the GUI's controllers change it and
the widgets observe it, so no widget has to know which controller changed what.  An observer is a
plain callable ``observer(name, value)`` called after a field took a new value; nothing is called
when a field is set to the value it already has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Observer = Callable[[str, Any], None]
FIELDS = ("project", "image", "run", "selection")


class Session:
    """The open project, current image name, shown run and selected (layer, object), with observers."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = dict.fromkeys(FIELDS)
        self._observers: list[Observer] = []

    def observe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer(name, value)`` after every change; returns a function that stops it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    def _set(self, name: str, value: Any) -> None:
        old = self._values[name]
        if old is value or (isinstance(old, str) and isinstance(value, str) and old == value):
            return
        self._values[name] = value
        for observer in list(self._observers):
            observer(name, value)

    @property
    def project(self) -> Any:
        """The open project (an ``app.core.project.Project``), or None."""
        return self._values["project"]

    @project.setter
    def project(self, value: Any) -> None:
        self._set("project", value)

    @property
    def image(self) -> str | None:
        """The name of the image on screen, or None."""
        return self._values["image"]

    @image.setter
    def image(self, value: str | None) -> None:
        self._set("image", value)

    @property
    def run(self) -> Any:
        """The run whose results are shown (an ``app.core.project.Run``), or None."""
        return self._values["run"]

    @run.setter
    def run(self, value: Any) -> None:
        self._set("run", value)

    @property
    def selection(self) -> tuple[str, dict[str, Any]] | None:
        """The selected object as (layer name, object), or None."""
        return self._values["selection"]

    @selection.setter
    def selection(self, value: tuple[str, dict[str, Any]] | None) -> None:
        self._set("selection", value)
