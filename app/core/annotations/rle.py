"""COCO run-length encoding (column-major run lengths, starting with a background run), in numpy so the
app runs without pycocotools, which the tests use as a cross-check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np



def crop_to_counts(crop: np.ndarray, offset: tuple[int, int], height: int, width: int) -> list[int]:
    """COCO run lengths (column-major, background first) of a cropped mask in a (height, width) image."""
    ys, xs = np.nonzero(crop)
    ys, xs = ys + offset[0], xs + offset[1]
    inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    lin = np.sort(xs[inside].astype(np.int64) * height + ys[inside])
    if lin.size == 0:
        return [height * width]
    breaks = np.flatnonzero(np.diff(lin) != 1) + 1
    starts = lin[np.r_[0, breaks]]
    ends = lin[np.r_[breaks - 1, lin.size - 1]] + 1
    counts = np.empty(2 * starts.size + 1, np.int64)
    counts[0] = starts[0]
    counts[1::2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = height * width - ends[-1]
    return counts[:-1].tolist() if counts[-1] == 0 else counts.tolist()


def counts_to_crop(counts: Sequence[int], height: int, width: int) -> tuple[np.ndarray, tuple[int, int]] | None:
    """Decode COCO run lengths into a tight cropped mask and its offset (y0, x0); None when empty."""
    counts = np.asarray(counts, dtype=np.int64)
    if (counts.size and counts.min() < 0) or int(counts.sum()) != height * width:
        raise ValueError(f"run lengths sum to {int(counts.sum())}, not {height} x {width} = {height * width}")
    starts = np.cumsum(counts) - counts
    run_starts, run_lengths = starts[1::2], counts[1::2]
    total = int(run_lengths.sum())
    if total == 0:
        return None
    before = np.cumsum(run_lengths) - run_lengths
    lin = np.repeat(run_starts - before, run_lengths) + np.arange(total)
    xs, ys = np.divmod(lin, height)
    y0, x0 = int(ys.min()), int(xs.min())
    crop = np.zeros((int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1), bool)
    crop[ys - y0, xs - x0] = True
    return crop, (y0, x0)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE ``{"size": [h, w], "counts": [...]}`` of a whole-image bool mask."""
    mask = np.asarray(mask, dtype=bool)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": crop_to_counts(mask, (0, 0), *mask.shape)}


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """Whole-image bool mask from a COCO RLE dict (counts as a list or a compressed string)."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = rle_counts_from_string(counts)
    out = np.zeros((height, width), bool)
    decoded = counts_to_crop(counts, height, width)
    if decoded is not None:
        crop, (y0, x0) = decoded
        out[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    return out


def rle_counts_to_string(counts: Sequence[int]) -> str:
    """COCO's compressed RLE string (pycocotools rleToString: delta-coded, 5 bits per character)."""
    out = []
    counts = [int(c) for c in counts]
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_counts_from_string(text: str | bytes) -> list[int]:
    """Run lengths from COCO's compressed RLE string (pycocotools rleFrString)."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise ValueError("compressed RLE string ends in the middle of a number")
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts
