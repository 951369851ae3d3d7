"""Checks on pixel values every reader and pipeline shares: usable dtypes, finite floats, label ids.

Each failure is an :class:`~app.core.errors.ImageError` naming the file, so a bad input is reported
in one line instead of failing deep inside numpy or scoring nonsense.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from app.core.errors import ImageError


def check_dtype(path: str | os.PathLike[str], dtype: Any) -> None:
    """Refuse pixel types no microscopy step can use (complex, structured)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise ImageError(f"{path}: pixels of type {dtype} are not supported; "
                         "use integer or floating-point images")


def check_finite(path: str, data: np.ndarray, region: tuple[int, int, int, int] | None) -> None:
    """ImageError counting NaN and infinite pixels in floating-point ``data`` (``region`` None = whole image)."""
    finite = np.isfinite(data)
    n_bad = int(finite.size - np.count_nonzero(finite))
    del finite
    if not n_bad:
        return
    n_nan = int(np.count_nonzero(np.isnan(data)))
    what = " and ".join(part for part in (f"{n_nan} NaN" if n_nan else "",
                                          f"{n_bad - n_nan} infinite" if n_bad - n_nan else "") if part)
    where = "" if region is None else (f" in rows {region[0]}-{region[2]}, columns {region[1]}-{region[3]} "
                                       "(the part read so far)")
    raise ImageError(f"{path}: {what} pixels{where}; no analysis can use them: replace them "
                     "(e.g. with 0) or crop them away first")



def label_ids(labels: np.ndarray, path: str | os.PathLike[str]) -> np.ndarray:
    """A label image as int64 ids; ImageError naming the file for negative or fractional ids (or NaN).

    Ids are object numbers (0 = background): a negative or fractional one is a conversion gone
    wrong, and counting or training on it would fail deep inside numpy or score nonsense.
    """
    data = np.asarray(labels)
    if data.dtype.kind == "b":
        return data.astype(np.int64)
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise ImageError(f"{path}: a label image must hold whole-number object ids, this one holds NaN or "
                             "infinite values")
        fractional = data != np.round(data)
        if fractional.any():
            raise ImageError(f"{path}: a label image must hold whole-number object ids, this one holds fractions "
                             f"(e.g. {data[fractional].flat[0]:g} in {int(np.count_nonzero(fractional))} pixel(s))")
    elif data.dtype.kind not in "iu":
        raise ImageError(f"{path}: a label image must hold whole-number object ids, not {data.dtype}")
    if data.dtype.kind != "u" and data.size:
        negative = int(np.count_nonzero(data < 0))
        if negative:
            raise ImageError(f"{path}: a label image holds object ids 0 (background), 1, 2, ...; {negative} "
                             f"pixel(s) have negative ids (down to {data.min():g}); relabel it first")
    return data.astype(np.int64, copy=False)
