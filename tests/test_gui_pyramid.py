"""Pyramid builds that leave nothing behind when cancelled or broken, and Z-stacks read as planes, never as channels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from app.core.errors import UserError
from app.core.jobs import run
from app.core.pyramid import build_pyramid, cache_ready, open_pyramid


def _section(path, shape=(2, 900, 700)):
    data = np.random.default_rng(1).integers(0, 4000, size=shape).astype(np.uint16)
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CYX"})
    return data


def test_cancelling_a_build_leaves_nothing_behind(tmp_path):
    source = tmp_path / "s.ome.tif"
    _section(source, (1, 3000, 2000))
    job = build_pyramid(source, tmp_path / "cache", min_side=64, strip_bytes=20_000)
    first = next(job)
    assert first.stage == "pyramid"
    job.close()  # what the job queue does on cancel
    assert not (tmp_path / "cache").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["s.ome.tif"]  # no half-built .tmp folder


def test_build_errors_reach_the_caller_as_user_errors(tmp_path):
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    with pytest.raises(UserError, match="broken.tif"):
        run(build_pyramid(tmp_path / "broken.tif", tmp_path / "cache"))


@pytest.mark.parametrize("axes, shape", [("ZYX", (3, 1200, 1000)), ("ZCYX", (3, 2, 1200, 1000)),
                                         ("CZYX", (2, 3, 1200, 1000))])
def test_z_stacks_read_planes_not_channels(tmp_path, axes, shape):
    """z=None means the first plane: the Z axis must never come back as channels (levels and cache)."""
    data = np.zeros(shape, np.uint16)
    for z in range(3):
        index = [slice(None)] * len(shape)
        index[axes.index("Z")] = z
        data[tuple(index)] = 100 * (z + 1)
    source = tmp_path / f"{axes}.ome.tif"
    tifffile.imwrite(source, data, ome=True, metadata={"axes": axes})
    channels = shape[axes.index("C")] if "C" in axes else 1
    run(build_pyramid(source, tmp_path / "cache", min_side=256))
    with open_pyramid(source, tmp_path / "cache") as pyramid:
        assert (pyramid.n_channels, pyramid.n_planes) == (channels, 3)
        assert pyramid.read(0, (0, 0, 4, 4)).shape == (channels, 4, 4)
        assert pyramid.read(0, (0, 0, 4, 4))[:, 0, 0].tolist() == [100] * channels
        assert pyramid.read(0, (0, 0, 4, 4), z=2)[:, 0, 0].tolist() == [300] * channels
        coarsest = pyramid.read(len(pyramid.levels) - 1)
        assert pyramid.levels[-1].source == "cache" and coarsest.shape[0] == channels
        assert np.all(coarsest == 100)  # cached levels hold the first plane
