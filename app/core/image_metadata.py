"""Calibration and channel names from a file's metadata: OME-XML, ImageJ, resolution tags, PNG/JPEG dpi.

Pixel size and z spacing come out in micrometres, or None ("unknown": lengths stay in pixels) when
the file carries a default or implausible value rather than a calibration.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

SCREEN_DPI = (72.0, 96.0)  # editors' default resolutions: not a microscope calibration
# pixel sizes a microscope image can have (1 nm for super-resolution ... 100 µm for a slide overview);
# outside it a value is a default or a unit mix-up (1 pixel per inch = 25 400 µm), not a calibration
PIXEL_SIZE_RANGE_UM = (1e-3, 100.0)
RGB_NAMES = ("R", "G", "B")

# micrometres per unit, for OME units, ImageJ 'unit' strings and TIFF resolution units (a table, not
# pint: pint imports dask on load, 0.3 s and a bigger installer for every calibrated TIFF opened)
_UM_PER_UNIT = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "micrometers": 1.0, "micrometres": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4,
    "centimetre": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6, "in": 25400.0, "inch": 25400.0,
    "inches": 25400.0,
}


def list_channel_names(names: Sequence[str | None] | None, n: int, rgb: bool = False) -> tuple[str, ...]:
    """``n`` channel names: the given ones where present, R/G/B for RGB, else C0, C1, ..."""
    defaults = RGB_NAMES if rgb and n == 3 else tuple(f"C{i}" for i in range(n))
    given = list(names or [])
    if len(given) != n:
        given = [None] * n
    return tuple(str(g).strip() if g is not None and str(g).strip() else d for g, d in zip(given, defaults))



def tiff_metadata(tif: Any, series: Any, page: Any) -> dict[str, Any]:
    """Channel names, pixel size and z spacing from OME-XML, ImageJ metadata or resolution tags."""
    meta: dict[str, Any] = {}
    kind = getattr(series, "kind", "")
    if kind == "ome" and tif.ome_metadata:
        meta.update(_ome_metadata(tif.ome_metadata))
    elif kind == "imagej" and tif.imagej_metadata:
        meta.update(_imagej_metadata(tif.imagej_metadata, page))
    if meta.get("pixel_size_um") is None:
        meta["pixel_size_um"] = _tag_pixel_size(page)
    meta["pixel_size_um"] = plausible_pixel_size(meta.get("pixel_size_um"))
    return meta


def _ome_metadata(xml: str) -> dict[str, Any]:
    """Channel names and physical sizes (µm) of the first OME Image."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return {}
    channels = [e for e in pixels if e.tag.rsplit("}", 1)[-1] == "Channel"]
    out: dict[str, Any] = {"channel_names": [c.get("Name") for c in channels]}
    for axis, key in (("X", "pixel_size_um"), ("Z", "z_spacing_um")):
        out[key] = _to_um(pixels.get(f"PhysicalSize{axis}"), pixels.get(f"PhysicalSize{axis}Unit", "µm"))
    return out


def _imagej_metadata(meta: dict[str, Any], page: Any) -> dict[str, Any]:
    """Channel names from Labels, pixel size from 'unit' + XResolution, z step from 'spacing'."""
    out: dict[str, Any] = {}
    n_channels = int(meta.get("channels", 1) or 1)
    labels = meta.get("Labels")
    if isinstance(labels, (list, tuple)) and len(labels) >= n_channels > 1:
        out["channel_names"] = list(labels[:n_channels])  # ImageJ planes: channel varies fastest
    unit = meta.get("unit")
    xres = _resolution(page)
    if unit is not None and xres:
        out["pixel_size_um"] = _to_um(1.0 / xres, unit)
    spacing = meta.get("spacing")
    if unit is not None and spacing:
        out["z_spacing_um"] = _to_um(spacing, unit)
    return out


def _resolution(page: Any) -> float | None:
    """XResolution (pixels per unit) of a page, or None."""
    try:
        xres = float(page.resolution[0])
    except Exception:
        return None
    return xres if xres > 0 and math.isfinite(xres) else None


def plausible_pixel_size(size_um: float | None) -> float | None:
    """``size_um`` when it lies in :data:`PIXEL_SIZE_RANGE_UM`, else None (unknown)."""
    if size_um is None or not math.isfinite(size_um):
        return None
    low, high = PIXEL_SIZE_RANGE_UM
    return float(size_um) if low <= size_um <= high else None


def dpi_pixel_size(dpi: Any) -> float | None:
    """Pixel size (µm) from a PNG/JPEG ``dpi`` entry; None when absent, a screen default or implausible."""
    if isinstance(dpi, (tuple, list)) and dpi and float(dpi[0]) > 0:
        if not any(abs(float(dpi[0]) - d) < 0.05 for d in SCREEN_DPI):
            return plausible_pixel_size(25400.0 / float(dpi[0]))
    return None


def _tag_pixel_size(page: Any) -> float | None:
    """Pixel size from XResolution when ResolutionUnit is inch, cm, mm or µm (not 'none').

    Both tags must be in the file: tifffile reports 1 pixel per inch for a TIFF without them
    (what Pillow writes), which is the absence of a calibration, not a 25 400 µm pixel.
    """
    tags = getattr(page, "tags", None)
    if tags is None or "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    xres = _resolution(page)
    unit = int(getattr(page, "resolutionunit", 1) or 1)
    per_unit = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}.get(unit)
    if xres is None or per_unit is None:
        return None
    if unit == 2 and any(abs(xres - dpi) < 0.01 for dpi in SCREEN_DPI):
        return None
    return per_unit / xres


def _to_um(value: Any, unit: Any) -> float | None:
    """A length in µm, or None when the value or unit is missing or not a length."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    key = str(unit).replace("\\u00B5", "µ").replace("\\u00b5", "µ").strip().casefold()
    factor = _UM_PER_UNIT.get(key)
    if factor is None or not math.isfinite(number) or number <= 0:
        return None
    return number * factor
