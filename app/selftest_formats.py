"""The self-test's format checks: write one small file of each format a library here can write, open it back.

A frozen app only holds the reading libraries' compiled parts (libCZI, Blosc/Zstd for Zarr, JPEG for
slides) if the installer collected them; opening a file is the only proof.  Each check writes with the
format's own writer (pylibCZIrw for CZI, bioio-ome-zarr for OME-Zarr 0.4 and 0.5, tifffile for an
Aperio-style SVS), opens it through :func:`app.core.images.open_image` and compares pixels, channel
names, pixel size and levels with what was written.  ND2, LIF, VSI, NDPI and SCN have no writer here.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CHANNELS = ("DAPI", "SOX9")
PIXEL_SIZE_UM = 0.5


@dataclass
class FormatCheck:
    """The outcome of writing and reading back one format."""

    format: str
    status: str  # "passed" or "failed"
    detail: str
    seconds: float = 0.0


def _planes(height: int = 300, width: int = 420) -> np.ndarray:
    """Two smooth uint16 channels (C, Y, X): distinct per channel, gentle enough for lossy codecs."""
    yy, xx = np.mgrid[0:height, 0:width]
    first = 1000 + 20 * yy + 7 * xx
    second = 3000 + 5 * ((yy // 30 + xx // 30) % 4) * 1000 + 3 * yy
    return np.stack([first, second]).astype(np.uint16)


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def _check_read(path: str | Path, source: np.ndarray, fmt: str, levels: int = 1) -> str:
    """Open ``path`` and compare it with the (C, Y, X) source; returns a one-line description."""
    from app.core.images import open_image

    with open_image(path) as image:
        info = image.info
        _expect(info.format == fmt, f"read as {info.format}, not {fmt}")
        _expect(info.shape == source.shape and info.axes == "CYX", f"shape {info.shape} {info.axes}")
        _expect(info.channel_names == CHANNELS, f"channel names {info.channel_names}")
        _expect(info.pixel_size_um is not None and abs(info.pixel_size_um - PIXEL_SIZE_UM) < 1e-6,
                f"pixel size {info.pixel_size_um}")
        _expect(len(info.levels) == levels, f"{len(info.levels)} levels, {levels} written")
        _expect(np.array_equal(image.read(), source), "pixels differ from those written")
        region = image.read(channel=CHANNELS[1], region=(40, 60, 140, 260))
        _expect(np.array_equal(region, source[1, 40:140, 60:260]), "a region read differs")
        return f"{info.shape[1]} x {info.shape[2]} px, {len(info.levels)} level(s)"


def check_czi(folder: Path) -> str:
    """A two-scene, two-channel CZI written by pylibCZIrw (zstd-compressed, as Axioscan files often are)."""
    from pylibCZIrw import czi as pyczi

    from app.core.images import list_images

    path = folder / "check.czi"
    scenes = [_planes(), _planes()[:, ::-1, :].copy()]
    with pyczi.create_czi(str(path), exist_ok=True, compression_options="zstd1:ExplicitLevel=1") as czi:
        for s, array in enumerate(scenes):
            for c, plane in enumerate(array):
                czi.write(data=plane, plane={"C": c, "T": 0, "Z": 0}, scene=s, location=(s * 600, 0))
        czi.write_metadata(document_name="check", channel_names=dict(enumerate(CHANNELS)),
                           scale_x=PIXEL_SIZE_UM * 1e-6, scale_y=PIXEL_SIZE_UM * 1e-6)
    refs = list_images(path)
    _expect(len(refs) == 2, f"{len(refs)} scenes listed, 2 written")
    return "; ".join(f"scene {i + 1}: {_check_read(ref, source, 'czi')}" for i, (ref, source) in
                     enumerate(zip(refs, scenes)))


def check_ome_zarr(folder: Path) -> str:
    """OME-Zarr 0.5 (Zarr v3) and 0.4 (Zarr v2, as converters write it), two levels, Blosc/Zstd chunks."""
    from bioio_ome_zarr.writers import Channel, OMEZarrWriter

    source = _planes()
    done = []
    for zarr_format in (3, 2):
        path = folder / f"check-v{zarr_format}.ome.zarr"
        c, h, w = source.shape
        writer = OMEZarrWriter(str(path), level_shapes=[(c, h, w), (c, -(-h // 2), -(-w // 2))], dtype=source.dtype,
                               chunk_shape=(1, 150, 210), zarr_format=zarr_format,
                               axes_names=["c", "y", "x"], axes_types=["channel", "space", "space"],
                               axes_units=[None, "micrometer", "micrometer"],
                               physical_pixel_size=[1.0, PIXEL_SIZE_UM, PIXEL_SIZE_UM],
                               channels=[Channel(label=n, color="FFFFFF") for n in CHANNELS])
        writer.write_full_volume(source)
        done.append(f"Zarr v{zarr_format}: {_check_read(path, source, 'ome-zarr', levels=2)}")
    return "; ".join(done)


def check_svs(folder: Path) -> str:
    """An Aperio-style SVS (JPEG tiles, thumbnail, reduced level) written by tifffile, read through tiffslide."""
    import tifffile

    from app.core.images import open_image

    yy, xx = np.mgrid[0:512, 0:768]
    rgb = np.stack([(yy // 2) % 256, (xx // 3) % 256, ((yy + xx) // 4) % 256], axis=-1).astype(np.uint8)
    path = folder / "check.svs"
    head = f"Aperio Image Library v12.0.15\n768x512 [0,0 768x512] (256x256) JPEG/RGB Q=95|AppMag = 20|MPP = {PIXEL_SIZE_UM}"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), photometric="rgb", compression="jpeg", description=head, metadata=None)
        tif.write(rgb[::8, ::8].copy(), photometric="rgb", description="Aperio Image Library thumbnail", metadata=None)
        tif.write(rgb[::2, ::2].copy(), tile=(256, 256), photometric="rgb", compression="jpeg",
                  description="Aperio level", metadata=None)
    with open_image(path) as image:
        info = image.info
        _expect(info.format == "whole-slide" and info.channel_names == ("R", "G", "B"), f"read as {info.format}")
        _expect(info.pixel_size_um is not None and abs(info.pixel_size_um - PIXEL_SIZE_UM) < 1e-6,
                f"pixel size {info.pixel_size_um}")
        _expect((384, 256) in [(w, h) for h, w in info.levels], f"levels {info.levels}")
        read = image.read(region=(100, 200, 300, 500)).astype(np.int16)
        error = float(np.abs(read - np.moveaxis(rgb[100:300, 200:500], -1, 0)).mean())
        _expect(error < 4.0, f"JPEG tiles decode {error:.1f} grey levels away from what was written")
        return f"{info.width} x {info.height} px RGB, {len(info.levels)} levels, JPEG error {error:.2f}"


CHECKS: dict[str, Callable[[Path], str]] = {"czi": check_czi, "ome-zarr": check_ome_zarr, "svs": check_svs}


def check_formats(folder: Path) -> list[FormatCheck]:
    """Run every format check in ``folder`` (created); a failure is reported, never raised."""
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for name, check in CHECKS.items():
        start = time.monotonic()
        try:
            detail = check(folder)
            results.append(FormatCheck(name, "passed", detail, time.monotonic() - start))
        except Exception as error:  # noqa: BLE001 - a self-test reports every failure instead of stopping
            results.append(FormatCheck(name, "failed", f"{type(error).__name__}: {error}\n"
                                       f"{traceback.format_exc(limit=6)}", time.monotonic() - start))
    return results


def format_lines(checks: list[FormatCheck]) -> list[str]:
    """One readable line per format (failures with their first detail line)."""
    return [f"  {c.status.upper():8s} {'format ' + c.format:19s} {c.detail.splitlines()[0]} ({c.seconds:.1f} s)"
            for c in checks]


def as_report(checks: list[FormatCheck]) -> list[dict[str, Any]]:
    """The checks as JSON-ready dicts for the self-test report."""
    return [{"format": c.format, "status": c.status, "detail": c.detail, "seconds": round(c.seconds, 2)}
            for c in checks]
