"""Which image files Stagescope opens: one suffix table for the CLI, the project and the GUI.

Also the one rule for naming an image after its file (:func:`image_stem`: batch tasks, project
entries, CLI pairing of images with labels) and for finding the image beside an annotation file.
Kept free of imports so that every module (images, readers, project browser, pipelines) can use
it without pulling in the reading libraries.  A scene of a multi-scene file (CZI, LIF, VSI, ND2
positions) is named ``file.czi#scene-2`` (1-based, as microscope software counts scenes).
"""

from __future__ import annotations

import os
from pathlib import Path

# format -> file suffixes (lower case); the reading library is named in app/core/readers.py
FORMATS: dict[str, tuple[str, ...]] = {
    "ome-tiff": (".ome.tif", ".ome.tiff", ".ome.btf"),
    "tiff": (".tif", ".tiff", ".btf"),
    "png": (".png",),
    "jpeg": (".jpg", ".jpeg"),
    "czi": (".czi",),
    "ome-zarr": (".ome.zarr", ".zarr"),
    "nd2": (".nd2",),
    "lif": (".lif",),
    "vsi": (".vsi",),
    "whole-slide": (".svs", ".ndpi", ".scn"),
}
IMAGE_SUFFIXES: tuple[str, ...] = tuple(s for suffixes in FORMATS.values() for s in suffixes)
PLANE_SUFFIXES: tuple[str, ...] = FORMATS["tiff"][:2] + FORMATS["png"] + FORMATS["jpeg"]
"""Single-plane files a brightfield field folder is made of (one file per z-plane/channel)."""

FOLDER_FORMATS = ("ome-zarr",)  # formats stored as a folder rather than a file
SCENE_MARK = "#scene-"


def image_format(path: str | os.PathLike[str]) -> str | None:
    """The format a file name's suffix says (longest suffix wins: ``.ome.tif`` before ``.tif``)."""
    name = Path(split_scene(path)[0]).name.lower()
    best: tuple[int, str | None] = (0, None)
    for fmt, suffixes in FORMATS.items():
        for suffix in suffixes:
            if name.endswith(suffix) and len(suffix) > best[0]:
                best = (len(suffix), fmt)
    return best[1]


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """True for an existing image file, or an OME-Zarr folder, whose suffix is known."""
    path = Path(path)
    fmt = image_format(path)
    if fmt is None:
        return False
    return path.is_dir() if fmt in FOLDER_FORMATS else path.is_file()


def split_scene(ref: str | os.PathLike[str]) -> tuple[Path, int | None]:
    """``file.czi#scene-2`` -> (Path('file.czi'), 1): the file and the 0-based scene (None: not given)."""
    text = os.fspath(ref)
    head, mark, tail = text.rpartition(SCENE_MARK)
    if mark and tail.isdigit() and int(tail) >= 1 and not Path(text).exists():
        return Path(head), int(tail) - 1
    return Path(text), None


def scene_ref(path: str | os.PathLike[str], index: int) -> str:
    """The name of scene ``index`` (0-based) of a multi-scene file: ``file.czi#scene-<index + 1>``."""
    return f"{os.fspath(path)}{SCENE_MARK}{index + 1}"


def image_stem(ref: str | os.PathLike[str]) -> str:
    """An image's name from its file name: format suffix removed, scene kept (``file.czi#scene-2`` -> ``file_scene-2``)."""
    path, scene = split_scene(ref)
    name = path.name
    fmt = image_format(path)
    for suffix in sorted(FORMATS.get(fmt or "", ()), key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = path.stem or name
    return f"{name}_scene-{scene + 1}" if scene is not None else name


ANNOTATION_SUFFIXES = (".geojson", ".geo.json")


def image_beside(annotation: str | os.PathLike[str]) -> Path | None:
    """The image a QuPath annotation file sits beside, else None: the image whose file name is the annotation's
    name without ``.geojson`` (``a.tif.geojson``), else whose :func:`image_stem` is (``a.geojson`` -> a.ome.tif),
    else whose name less its last suffix is (``a.ome.geojson`` -> a.ome.tif); first in sorted order."""
    annotation = Path(annotation)
    base = annotation.name
    for suffix in ANNOTATION_SUFFIXES:
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
            break
    images = sorted(p for p in annotation.parent.iterdir() if is_image_path(p))
    for name_of in (lambda p: p.name, image_stem, lambda p: Path(p.name).stem):
        found = [p for p in images if name_of(p) == base]
        if found:
            return found[0]
    return None
