"""PNG and JPEG through Pillow: the header is read on open, the pixels decoded whole on first read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.core.errors import ImageError
from app.core.image_axes import axis_length, map_axes
from app.core.image_metadata import dpi_pixel_size, list_channel_names
from app.core.lazy_image import Image, ImageInfo


def open_pillow(path: Path, fmt: str, axes_override: str | None) -> Image:
    """Open a PNG/JPEG header now; the pixels are decoded on the first read."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            mode, size, info = im.mode, im.size, dict(im.info)
    except Exception as error:
        raise ImageError(f"{path}: not a readable {fmt.upper()} ({type(error).__name__}: {error})") from error
    target = _pillow_target_mode(mode)
    width, height = size
    samples = {"RGB": 3}.get(target, 1)
    native_axes = "YXS" if samples > 1 else "YX"
    native_shape = (height, width, samples) if samples > 1 else (height, width)
    layout = map_axes(path, native_axes, native_shape, axes_override, rgb=samples == 3, alpha=False)
    dtype = {"L": np.uint8, "RGB": np.uint8, "I;16": np.uint16, "I": np.int32, "F": np.float32}[target]
    pixel_size = dpi_pixel_size(info.get("dpi"))
    names = list_channel_names(None, axis_length(layout, "C"), rgb=samples == 3)
    image_info = ImageInfo(path=str(path), format=fmt, shape=layout.shape, dtype=np.dtype(dtype),
                           axes=layout.axes, channel_names=names, pixel_size_um=pixel_size,
                           levels=((height, width),))

    def load() -> np.ndarray:
        try:
            with PILImage.open(path) as im:
                if im.mode != target and not (target == "I;16" and im.mode.startswith("I;16")):
                    im = im.convert(target)
                data = np.asarray(im)
        except PILImage.DecompressionBombError as error:
            raise ImageError(f"{path}: too large for {fmt.upper()} ({width} x {height}); "
                             "save it as a tiled TIFF") from error
        except Exception as error:
            raise ImageError(f"{path}: cannot decode the {fmt.upper()} ({type(error).__name__}: "
                             f"{error}); the file may be truncated or corrupt") from error
        return data.astype(dtype, copy=False).reshape(native_shape)

    return Image(image_info, layout, [], loader=load)


def _pillow_target_mode(mode: str) -> str:
    """The Pillow mode we decode to: gray, 16-bit gray, 32-bit int/float, or RGB (alpha dropped)."""
    if mode in ("L", "LA", "1", "La"):
        return "L"
    if mode.startswith("I;16"):
        return "I;16"
    if mode in ("I", "F"):
        return mode
    return "RGB"
