"""app.core.tiles: grid geometry, ownership, padded reads, stitching and 90-degree rotations.

Property tests are plain loops over random shapes, tile sizes and overlaps (seeded).
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from app.core.images import open_image, write_tiff
from app.core.tiles import (
    Stitcher,
    Tile,
    TileGrid,
    ramp,
    reflect_indices,
    rotate90,
    rotate_boxes,
    rotate_points,
    rotate_xy,
    rotated_shape,
    stitch,
    unrotate90,
    unrotate_boxes,
    unrotate_points,
    unrotate_xy,
)


def _random_grids(n: int, seed: int = 0, max_side: int = 120, min_tile: int = 2):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        height, width = (int(v) for v in rng.integers(1, max_side, 2))
        tile = int(rng.integers(min_tile, 48))
        overlap = int(rng.integers(0, tile // 2 + 1))
        yield TileGrid(height, width, tile, overlap)


# ---------------------------------------------------------------------------------- geometry


def test_grid_by_hand():
    grid = TileGrid(10, 7, tile_size=4, overlap=2)  # stride 2, margin 1
    assert (grid.n_rows, grid.n_cols, len(grid)) == (5, 4, 20)
    first = grid[0]
    assert (first.row, first.col, first.core, first.window) == (0, 0, (0, 0, 2, 2), (-1, -1, 3, 3))
    last_col = grid.tile(0, 3)
    assert last_col.core == (0, 6, 2, 7) and last_col.window == (-1, 5, 3, 9)
    assert last_col.index == 3 and grid[-1].core == (8, 6, 10, 7)
    assert first.core_in_window == (1, 1, 3, 3) and first.shape == (4, 4)
    with pytest.raises(IndexError):
        grid.tile(5, 0)


def test_grid_validation():
    with pytest.raises(ValueError, match="overlap"):
        TileGrid(100, 100, tile_size=64, overlap=40)
    with pytest.raises(ValueError, match="pad"):
        TileGrid(100, 100, pad="wrap")
    with pytest.raises(ValueError, match="positive"):
        TileGrid(0, 100)


def test_every_pixel_in_exactly_one_core():
    for grid in _random_grids(150):
        count = np.zeros((grid.height, grid.width), int)
        for tile in grid:
            y0, x0, y1, x1 = tile.core
            assert 0 <= y0 < y1 <= grid.height and 0 <= x0 < x1 <= grid.width
            assert tile.shape == grid.tile_size  # every window has the model's input size
            wy0, wx0, wy1, wx1 = tile.window
            assert wy0 <= y0 - grid.margin[0] and wx0 <= x0 - grid.margin[1]  # context before
            assert wy1 >= y1 + grid.margin[0] and wx1 >= x1 + grid.margin[1]  # and after
            count[y0:y1, x0:x1] += 1
        assert (count == 1).all(), grid


def test_owner_agrees_with_owns_and_is_unique():
    rng = np.random.default_rng(1)
    for grid in _random_grids(60, seed=2):
        ys = rng.uniform(-5, grid.height + 5, 200)
        xs = rng.uniform(-5, grid.width + 5, 200)
        owned = np.stack([tile.owns(ys, xs) for tile in grid])
        assert (owned.sum(axis=0) == 1).all()  # one owner per centre, even outside the image
        np.testing.assert_array_equal(owned.argmax(axis=0), grid.owner_indices(ys, xs))
        y, x = float(ys[0]), float(xs[0])
        assert grid.owner(y, x).owns(y, x) is True
    loose = Tile(0, 0, 0, (0, 0, 10, 10), (-2, -2, 12, 12))  # no image_shape: plain half-open core
    assert loose.owns(5, 9.5) and not loose.owns(-1, 5) and not loose.owns(5, 10)
    assert TileGrid(10, 10, 12, 2)[0].owns(-1, 5) and TileGrid(10, 10, 12, 2)[0].owns(5, 10)


def test_object_on_a_seam_is_kept_once():
    grid = TileGrid(100, 100, tile_size=40, overlap=10)  # stride 30: seam between cores at x = 30
    centre = (12.0, 30.0)  # exactly on the seam: belongs to the core starting at 30
    seen = [tile for tile in grid if tile.window[1] <= centre[1] < tile.window[3]
            and tile.window[0] <= centre[0] < tile.window[2]]
    assert len(seen) == 2  # both windows see the object...
    keepers = [tile for tile in seen if tile.owns(*centre)]
    assert [(t.row, t.col) for t in keepers] == [(0, 1)]  # ...one keeps it


def test_coordinate_transforms():
    tile = TileGrid(50, 60, tile_size=20, overlap=4).tile(1, 2)  # window starts at (14, 30)
    assert tile.offset == (14, 30)
    np.testing.assert_array_equal(tile.points_to_section([[1, 2]]), [[15, 32]])
    np.testing.assert_array_equal(tile.points_to_tile(tile.points_to_section([[1, 2]])), [[1, 2]])
    np.testing.assert_array_equal(tile.boxes_to_section([[1, 2, 3, 4]]), [[31, 16, 33, 18]])
    np.testing.assert_array_equal(tile.boxes_to_tile([[31, 16, 33, 18]]), [[1, 2, 3, 4]])
    np.testing.assert_array_equal(tile.xy_to_section([[1, 2]]), [[31, 16]])
    np.testing.assert_array_equal(tile.xy_to_tile([[31, 16]]), [[1, 2]])
    window = np.arange(400).reshape(20, 20)
    assert tile.crop_core(window).shape == (16, 16) and tile.crop_core(window)[0, 0] == window[2, 2]


# ---------------------------------------------------------------------------------- reading


def test_reflect_indices_match_numpy_pad():
    for n in (1, 2, 3, 8):
        values = np.arange(n) * 10
        for pad in (0, 1, 4, 19):
            expected = np.pad(values, pad, mode="reflect")
            np.testing.assert_array_equal(values[reflect_indices(np.arange(-pad, n + pad), n)], expected)
    np.testing.assert_array_equal(reflect_indices(np.array([-2, -1, 0, 4, 5]), 5), [2, 1, 0, 4, 3])


def test_reads_pad_by_reflection_or_zeros():
    rng = np.random.default_rng(3)
    for grid in _random_grids(60, seed=4, min_tile=8):
        image = rng.random((2, grid.height, grid.width)).astype(np.float32)
        zero = TileGrid(grid.height, grid.width, grid.tile_size, grid.overlap, pad="zero")
        full = np.pad(image, [(0, 0), (64, 64), (64, 64)], mode="reflect")  # reference reflection
        for tile in grid:
            wy0, wx0, wy1, wx1 = tile.window
            before = (max(0, -wy0), max(0, -wx0))
            after = (max(0, wy1 - grid.height), max(0, wx1 - grid.width))
            widths = [(0, 0), (before[0], after[0]), (before[1], after[1])]
            cut = image[:, max(wy0, 0):min(wy1, grid.height), max(wx0, 0):min(wx1, grid.width)]
            np.testing.assert_array_equal(zero.read(image, tile), np.pad(cut, widths))
            np.testing.assert_array_equal(grid.read(image, tile),
                                          full[:, wy0 + 64:wy1 + 64, wx0 + 64:wx1 + 64])


def test_windows_from_ome_tiff_equal_array_slices(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.integers(0, 60000, (2, 3, 90, 70), dtype=np.uint16)  # C, Z, Y, X
    path = write_tiff(tmp_path / "s.ome.tif", data, "CZYX", channel_names=["DAPI", "SOX9"], tile=(16, 16))
    with open_image(path) as image:
        for tile_size, overlap in ((32, 8), (50, 12), (128, 0)):
            for pad in ("reflect", "zero"):
                grid = TileGrid.from_image(image, tile_size, overlap, pad=pad)
                for tile, window in grid.iter_read(image, channel="SOX9", z=2):
                    np.testing.assert_array_equal(window, grid.read(data[1, 2], tile))
                tile = grid[len(grid) - 1]
                np.testing.assert_array_equal(grid.read(image, tile), grid.read(data, tile))
    with pytest.raises(ValueError, match="Images"):
        grid.read(data, grid[0], channel=0)
    with pytest.raises(ValueError, match="grid is"):
        TileGrid(10, 10, 8, 2).read(data, grid[0])


# ---------------------------------------------------------------------------------- stitching


def test_ramps_sum_to_one():
    np.testing.assert_allclose(ramp(4, "linear"), [0.125, 0.375, 0.625, 0.875])
    for blend in ("cosine", "linear"):
        for n in (1, 2, 7, 64):
            np.testing.assert_allclose(ramp(n, blend) + ramp(n, blend)[::-1], 1.0)


def test_weights_partition_unity():
    for grid in _random_grids(40, seed=6):
        for blend in ("cosine", "linear", "none"):
            stitcher = Stitcher(grid, np.zeros((grid.height, grid.width), np.float32), blend=blend)
            total = np.zeros((grid.height, grid.width))
            for tile in grid:
                stitcher.add(tile, np.ones(tile.shape, np.float32))
                if blend == "none":
                    w = stitcher.weights(tile)
                    assert w.sum() == (tile.core[2] - tile.core[0]) * (tile.core[3] - tile.core[1])
            total += stitcher.finish()
            np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_tiling_then_stitching_returns_the_image():
    rng = np.random.default_rng(7)
    for number, grid in enumerate(_random_grids(80, seed=8)):
        channels = (3,) if number % 2 else ()
        image = rng.random(channels + (grid.height, grid.width)).astype(np.float32)
        out = np.full(image.shape, np.nan, np.float32)  # clear=True must wipe this
        blend = ("cosine", "linear", "none")[number % 3]
        result = stitch(grid, grid.iter_read(image), out, blend=blend)
        assert result is out
        np.testing.assert_allclose(out, image, atol=1e-5)


def test_blend_is_smooth_across_a_seam():
    """Two windows predicting different constants meet in a ramp, not a step."""
    grid = TileGrid(1, 60, tile_size=(1, 40), overlap=(0, 20))  # stride 20: 3 windows
    out = np.zeros((1, 60), np.float32)
    stitcher = Stitcher(grid, out)
    for tile in grid:
        stitcher.add(tile, np.full(tile.shape, float(tile.col), np.float32))
    row = stitcher.finish()[0]
    assert row[0] == 0.0 and row[-1] == 2.0
    assert np.all(np.diff(row) >= 0) and np.abs(np.diff(row)).max() < 0.1  # monotone, no jump


def test_stitch_into_memmap_and_zarr(tmp_path):
    rng = np.random.default_rng(9)
    grid = TileGrid(70, 50, tile_size=32, overlap=8)
    image = rng.random((2, 70, 50)).astype(np.float32)
    memmap = np.lib.format.open_memmap(tmp_path / "prob.npy", mode="w+", dtype=np.float32, shape=(2, 70, 50))
    store = zarr.open_array(str(tmp_path / "prob.zarr"), mode="w", shape=(2, 70, 50), chunks=(1, 16, 16),
                            dtype="float32")
    for out in (memmap, store):
        stitch(grid, grid.iter_read(image), out)
        np.testing.assert_allclose(np.asarray(out[:]), image, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "prob.npy"), image, atol=1e-5)


def test_stitcher_errors():
    grid = TileGrid(20, 20, tile_size=16, overlap=4)
    with pytest.raises(ValueError, match="out must be"):
        Stitcher(grid, np.zeros((20, 21), np.float32))
    with pytest.raises(ValueError, match="float"):
        Stitcher(grid, np.zeros((20, 20), np.uint8))
    stitcher = Stitcher(grid, np.zeros((20, 20), np.float32))
    with pytest.raises(ValueError, match="expected"):
        stitcher.add(grid[0], np.zeros((2, 16, 16), np.float32))
    stitcher.add(grid[0], np.zeros((16, 16), np.float32))
    with pytest.raises(ValueError, match="already added"):
        stitcher.add(grid[0], np.zeros((16, 16), np.float32))
    assert not stitcher.complete
    with pytest.raises(ValueError, match="3 of 4 tiles were not added"):
        stitcher.finish()


# ---------------------------------------------------------------------------------- rotations


def test_rotations_by_hand():
    # image 4 x 6 (H x W); rot90 k=1 turns it counter-clockwise into 6 x 4
    assert rotated_shape((4, 6), 1) == (6, 4) and rotated_shape((4, 6), 2) == (4, 6)
    np.testing.assert_array_equal(rotate_boxes([[1, 0, 3, 2]], 1, (4, 6)), [[0, 3, 2, 5]])
    np.testing.assert_array_equal(rotate_boxes([[1, 0, 3, 2]], 2, (4, 6)), [[3, 2, 5, 4]])
    np.testing.assert_array_equal(rotate_points([[0, 5]], 1, (4, 6)), [[0, 0]])  # top-right -> top-left
    np.testing.assert_array_equal(rotate_xy([[6, 0]], 1, (4, 6)), [[0, 0]])


def test_rotated_crop_equals_crop_rotated():
    rng = np.random.default_rng(10)
    for _ in range(100):
        height, width = (int(v) for v in rng.integers(2, 30, 2))
        image = rng.random((2, height, width))
        x0, x1 = sorted(rng.choice(width + 1, 2, replace=False))
        y0, y1 = sorted(rng.choice(height + 1, 2, replace=False))
        for k in range(-4, 5):
            turned = rotate90(image, k)
            bx0, by0, bx1, by1 = rotate_boxes([[x0, y0, x1, y1]], k, (height, width))[0].astype(int)
            np.testing.assert_array_equal(turned[:, by0:by1, bx0:bx1],
                                          np.rot90(image[:, y0:y1, x0:x1], k, axes=(1, 2)))
            py, px = int(rng.integers(height)), int(rng.integers(width))
            qy, qx = rotate_points([[py, px]], k, (height, width))[0].astype(int)
            assert turned[0, qy, qx] == image[0, py, px]


def test_rotate_then_unrotate_is_identity():
    rng = np.random.default_rng(11)
    for _ in range(50):
        shape = tuple(int(v) for v in rng.integers(1, 50, 2))
        xs = np.sort(rng.uniform(0, shape[1], (5, 2)), axis=1)
        ys = np.sort(rng.uniform(0, shape[0], (5, 2)), axis=1)
        boxes = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)
        points = rng.uniform(0, min(shape) - 1, (7, 2))
        mask = rng.random((3,) + shape) > 0.5
        for k in range(-3, 8):
            np.testing.assert_allclose(unrotate_boxes(rotate_boxes(boxes, k, shape), k, shape), boxes)
            np.testing.assert_allclose(unrotate_points(rotate_points(points, k, shape), k, shape), points)
            np.testing.assert_allclose(unrotate_xy(rotate_xy(points, k, shape), k, shape), points)
            np.testing.assert_array_equal(unrotate90(rotate90(mask, k), k), mask)
    assert rotate_boxes(np.zeros((0, 4)), 1, (5, 5)).shape == (0, 4)
