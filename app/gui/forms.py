"""Forms built from parameter dataclasses: one editor per field, values back as the dataclass.

A pipeline's parameters are one dataclass (DESIGN.md); the CLI builds its options from it and the
GUI builds this form, so a new field shows up in both without GUI changes.  Editors by type:
bool -> check box, int -> spin box, float -> spin box, ``X | None`` -> an "auto" check box beside
the editor, ``Literal``/``Enum`` or ``metadata["choices"]`` -> combo box, str -> line edit, Path ->
line edit with a browse button, lists/tuples/dicts -> JSON text.  Field help comes from
``metadata["help"]`` or the trailing ``# comment`` of the field in the source, the label from
``metadata["label"]`` or the field name.  When some fields carry ``metadata["basic"] = True`` the
form shows those first and folds the others under a collapsed "Advanced" section, so a long
parameter list does not hide the few values a biologist changes.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
    QPushButton, QSpinBox, QToolButton, QVBoxLayout, QWidget,
)

# string fields whose values are well known get a combo box (still editable)
KNOWN_CHOICES = {"device": ("auto", "cpu", "cuda", "mps")}  # a pipeline's own choices: field(metadata={"choices": ...})


def field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of a dataclass's fields in its source (empty when unavailable)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments = {}
    for match in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, re.MULTILINE):
        comments[match.group(1)] = match.group(2).strip()
    return comments


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) of ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


ACRONYMS = {"dapi": "DAPI", "tta": "TTA", "um2": "µm²", "um": "µm", "px": "px", "iou": "IoU", "ap": "AP",
            "gpu": "GPU", "cpu": "CPU", "id": "id"}
# field names that are abbreviations in code but read as words in a form
HUMAN_LABELS = {"lr": "Learning rate", "half": "Half-precision weights (float16)", "val_fraction": "Validation share",
                "val_crops": "Validation crops", "weight_decay": "Weight decay", "n_epochs": "Epochs",
                "tta": "Test-time augmentation (TTA)", "min_tubule_area_um2": "Smallest tubule (µm²)",
                "dapi": "DAPI channel"}


def label_for(name: str) -> str:
    """``learning_rate`` -> ``Learning rate``; abbreviations read as words (``lr`` -> ``Learning rate``), known
    acronyms and units keep their spelling (``iou`` -> ``IoU``)."""
    if name in HUMAN_LABELS:
        return HUMAN_LABELS[name]
    words = [ACRONYMS.get(word, word) for word in name.strip("_").split("_")]
    text = " ".join(words)
    return text if words and words[0] in ACRONYMS.values() else text[:1].upper() + text[1:]


class FieldEditor(QWidget):
    """Editor of one dataclass field; ``value()`` returns a Python value of the field's type."""

    changed = Signal()

    def __init__(self, name: str, hint: Any, default: Any, help_text: str = "",
                 metadata: dict | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.hint, self.optional = _unwrap_optional(hint)
        self.metadata = dict(metadata or {})
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.auto: QCheckBox | None = None
        if self.optional:
            self.auto = QCheckBox("auto")
            self.auto.setToolTip("Leave unset: the pipeline decides (e.g. estimates it from the image)")
            self.auto.toggled.connect(self._auto_toggled)
            layout.addWidget(self.auto)
        self.editor = self._make_editor(default)
        layout.addWidget(self.editor, 1)
        if self._kind == "path":
            browse = QPushButton("...")
            browse.setMaximumWidth(30)
            browse.clicked.connect(self._browse)
            layout.addWidget(browse)
        if help_text:
            self.setToolTip(help_text)
            self.editor.setToolTip(help_text)
        self.set_value(default)

    # -- construction

    def _choices(self) -> tuple | None:
        if "choices" in self.metadata:
            return tuple(self.metadata["choices"])
        if typing.get_origin(self.hint) is typing.Literal:
            return typing.get_args(self.hint)
        if isinstance(self.hint, type) and issubclass(self.hint, enum.Enum):
            return tuple(self.hint)
        if self.hint is str and self.name in KNOWN_CHOICES:
            return KNOWN_CHOICES[self.name]
        return None

    def _make_editor(self, default: Any) -> QWidget:
        choices = self._choices()
        hint = self.hint
        if choices is not None:
            self._kind = "choice"
            box = QComboBox()
            self._choice_values = list(choices)
            for choice in choices:
                box.addItem(choice.name if isinstance(choice, enum.Enum) else str(choice))
            free_text = hint is str and "choices" not in self.metadata
            box.setEditable(free_text and typing.get_origin(hint) is not typing.Literal)
            box.currentIndexChanged.connect(self.changed)
            box.currentTextChanged.connect(self.changed)
            return box
        if hint is bool:
            self._kind = "bool"
            box = QCheckBox()
            box.toggled.connect(self.changed)
            return box
        if hint is int:
            self._kind = "int"
            spin = QSpinBox()
            spin.setRange(int(self.metadata.get("min", -2**31 + 1)), int(self.metadata.get("max", 2**31 - 1)))
            spin.valueChanged.connect(self.changed)
            return spin
        if hint is float:
            self._kind = "float"
            spin = QDoubleSpinBox()
            spin.setRange(float(self.metadata.get("min", -1e12)), float(self.metadata.get("max", 1e12)))
            decimals = 6 if isinstance(default, float) and default and abs(default) < 0.01 else 4
            spin.setDecimals(decimals)
            spin.setSingleStep(abs(default) / 10 if isinstance(default, float) and default else 0.1)
            spin.valueChanged.connect(self.changed)
            return spin
        if hint is Path or hint == "Path":
            self._kind = "path"
        elif typing.get_origin(hint) in (list, tuple, dict) or hint in (list, tuple, dict):
            self._kind = "json"
        else:
            self._kind = "str"
        edit = QLineEdit()
        edit.textChanged.connect(self.changed)
        return edit

    # -- values

    def _auto_toggled(self, checked: bool) -> None:
        self.editor.setEnabled(not checked)
        self.changed.emit()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, f"Choose {label_for(self.name)}", self.editor.text())
        if path:
            self.editor.setText(path)

    def set_value(self, value: Any) -> None:
        """Show ``value`` (None ticks "auto" for optional fields)."""
        if self.auto is not None:
            self.auto.setChecked(value is None)
            self.editor.setEnabled(value is not None)
            if value is None:
                return
        if self._kind == "choice":
            names = [getattr(c, "name", str(c)) for c in self._choice_values]
            if value in self._choice_values:
                self.editor.setCurrentIndex(self._choice_values.index(value))
            elif str(value) in names:
                self.editor.setCurrentIndex(names.index(str(value)))
            elif self.editor.isEditable():
                self.editor.setEditText(str(value))
        elif self._kind == "bool":
            self.editor.setChecked(bool(value))
        elif self._kind == "int":
            self.editor.setValue(int(value))
        elif self._kind == "float":
            self.editor.setValue(float(value))
        elif self._kind == "json":
            self.editor.setText(json.dumps(value))
        else:
            self.editor.setText("" if value is None else str(value))

    def value(self) -> Any:
        """The edited value; raises ValueError with the field's name when the text is not valid."""
        if self.auto is not None and self.auto.isChecked():
            return None
        if self._kind == "choice":
            index = self.editor.currentIndex()
            text = self.editor.currentText()
            if index >= 0 and self.editor.itemText(index) == text:
                return self._choice_values[index]
            return text
        if self._kind == "bool":
            return self.editor.isChecked()
        if self._kind in ("int", "float"):
            return self.editor.value()
        text = self.editor.text()
        if self._kind == "path":
            return Path(text) if text else None
        if self._kind == "json":
            try:
                value = json.loads(text) if text.strip() else None
            except ValueError as error:
                raise ValueError(f"{label_for(self.name)}: not valid JSON ({error})") from error
            origin = typing.get_origin(self.hint) or self.hint
            return tuple(value) if origin is tuple and isinstance(value, list) else value
        return text


class DataclassForm(QWidget):
    """A form for a parameters dataclass: ``values()`` returns a new instance with the edited values."""

    changed = Signal()

    def __init__(self, params_type: type, values: Any = None, parent: QWidget | None = None,
                 hidden: Iterable[str] = ()) -> None:
        """``hidden``: fields another control of the window sets (they keep their default or given value)."""
        super().__init__(parent)
        if not dataclasses.is_dataclass(params_type):
            raise TypeError(f"{params_type!r} is not a dataclass")
        self.params_type = params_type
        self.editors: dict[str, FieldEditor] = {}
        self.hidden = set(hidden)
        self._hidden_values: dict[str, Any] = {}
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        layout = QFormLayout()
        layout.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        outer.addLayout(layout)
        shown = [f for f in dataclasses.fields(params_type)
                 if f.init and not f.name.startswith("_") and f.name not in self.hidden]
        split = any(f.metadata.get("basic") for f in shown)
        self.advanced_button: QToolButton | None = None
        self.advanced = QWidget()
        advanced_layout = QFormLayout(self.advanced)
        advanced_layout.setContentsMargins(0, 0, 0, 0)
        advanced_layout.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        if split:
            n_advanced = sum(1 for f in shown if not f.metadata.get("basic"))
            self.advanced_button = QToolButton()
            self.advanced_button.setText(f"Advanced ({n_advanced})")
            self.advanced_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            self.advanced_button.setCheckable(True)
            self.advanced_button.setArrowType(Qt.ArrowType.RightArrow)
            self.advanced_button.setToolTip("Show the parameters that are rarely changed")
            self.advanced_button.toggled.connect(self.set_advanced_visible)
            outer.addWidget(self.advanced_button)
            outer.addWidget(self.advanced)
            self.advanced.setVisible(False)
        try:
            hints = typing.get_type_hints(params_type)
        except Exception:  # noqa: BLE001 - unresolvable annotations fall back to the default's type
            hints = {}
        comments = field_comments(params_type)
        defaults = params_type() if _all_defaults(params_type) else None
        for f in shown:
            default = getattr(defaults, f.name, None) if defaults is not None else None
            hint = hints.get(f.name, type(default) if default is not None else str)
            help_text = f.metadata.get("help", "") or comments.get(f.name, "")
            editor = FieldEditor(f.name, hint, default, help_text, dict(f.metadata))
            editor.changed.connect(self.changed)
            label = QLabel(f.metadata.get("label", label_for(f.name)))
            if help_text:
                label.setToolTip(help_text)
            (layout if not split or f.metadata.get("basic") else advanced_layout).addRow(label, editor)
            self.editors[f.name] = editor
        if values is not None:
            self.set_values(values)

    def set_advanced_visible(self, visible: bool) -> None:
        """Unfold (or fold) the Advanced section."""
        if self.advanced_button is None:
            return
        self.advanced.setVisible(visible)
        self.advanced_button.setArrowType(Qt.ArrowType.DownArrow if visible else Qt.ArrowType.RightArrow)
        if self.advanced_button.isChecked() != visible:
            self.advanced_button.setChecked(visible)

    def is_basic(self, name: str) -> bool:
        """Whether field ``name`` is shown without unfolding Advanced."""
        return self.advanced_button is None or not self.advanced.isAncestorOf(self.editors[name])

    def set_values(self, values: Any) -> None:
        """Show the values of a dataclass instance or a dict (unknown keys ignored)."""
        data = dataclasses.asdict(values) if dataclasses.is_dataclass(values) else dict(values or {})
        for name, value in data.items():
            if name in self.hidden:
                self._hidden_values[name] = value
            elif name in self.editors:
                try:
                    self.editors[name].set_value(value)
                except (TypeError, ValueError):
                    pass  # a remembered value of an older type: keep the default

    def value_dict(self) -> dict[str, Any]:
        """The edited values as a dict (raises ValueError naming a bad field)."""
        return {**self._hidden_values, **{name: editor.value() for name, editor in self.editors.items()}}

    def values(self) -> Any:
        """A new parameters instance; raises ValueError with a readable message when invalid."""
        data = self.value_dict()
        try:
            return self.params_type(**data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"invalid parameters: {error}") from error

    def reset(self) -> None:
        """Back to the dataclass defaults."""
        if _all_defaults(self.params_type):
            self.set_values(self.params_type())


def _all_defaults(params_type: type) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(params_type) if f.init)


def jsonable_params(values: Any) -> dict[str, Any]:
    """A parameters instance as JSON-friendly dict (paths as text, enums by name) for settings."""
    data = dataclasses.asdict(values) if dataclasses.is_dataclass(values) else dict(values)
    out = {}
    for key, value in data.items():
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, enum.Enum):
            value = value.name
        out[key] = value
    return out
