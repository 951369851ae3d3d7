"""app.core.images: opening real and synthetic TIFF/OME-TIFF/ImageJ/PNG/JPEG, lazy reads, errors, writing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from app.core.errors import ImageError
from app.core.images import halve, open_image, read_image, require_dtype, write_tiff

# ---------------------------------------------------------------------------------- real data


def _real_files(shared: Path) -> list[Path]:
    files = sorted((shared / "stardist-sample").glob("*.tif"))
    files += sorted((shared / "brightfield-sephace").glob("set*/*.tif"))
    files += sorted((shared / "nuclei-dsb2018" / "images").glob("*.tif"))[:4]
    files += sorted((shared / "nuclei-dsb2018" / "labels").glob("*.tif"))[:2]
    return files


def test_real_files_open_with_right_info(shared_data):
    files = _real_files(shared_data)
    assert len(files) >= 20
    for path in files:
        expected = tifffile.imread(path)  # independent reference reader
        with open_image(path) as image:
            info = image.info
            assert info.format == "tiff"
            assert info.axes == "YX" and info.shape == expected.shape
            assert (info.height, info.width) == expected.shape
            assert info.dtype == expected.dtype
            assert info.n_channels == 1 and info.channel_names == ("C0",) and info.n_planes == 1
            assert info.pixel_size_um is None  # these files carry ResolutionUnit NONE
            assert info.levels == (expected.shape,)
            np.testing.assert_array_equal(image.read(), expected)
            y1, x1 = min(100, info.height), min(90, info.width)
            np.testing.assert_array_equal(image.read(region=(7, 5, y1, x1)), expected[7:y1, 5:x1])


def test_real_sizes_and_types(shared_data):
    info = open_image(shared_data / "stardist-sample" / "img2d.tif").info
    assert (info.height, info.width, str(info.dtype)) == (512, 512, "uint16")
    labels = read_image(shared_data / "stardist-sample" / "mask2d.tif")
    assert len(np.unique(labels)) - 1 == 125  # the README's 125 nuclei
    bright = open_image(shared_data / "brightfield-sephace" / "set1" / "fl.tif")
    assert bright.info.shape == (1024, 1344) and bright.info.dtype == np.uint8
    assert bright.info.to_dict()["dtype"] == "uint8"
    bright.close()


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.97])
@pytest.mark.parametrize("name", ["stardist-sample/img2d.tif", "nuclei-dsb2018/images/00071198d059ba7f.tif"])
def test_truncated_real_tiff_raises_image_error(shared_data, tmp_path, name, fraction):
    source = shared_data / name
    if not source.exists():
        pytest.skip(f"{source} not present")
    data = source.read_bytes()
    broken = tmp_path / "broken.tif"
    broken.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ImageError, match="broken.tif"):
        with open_image(broken) as image:
            image.read()


def test_truncated_header_raises_image_error(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.ones((64, 64), np.uint8))
    path.write_bytes(path.read_bytes()[:12])
    with pytest.raises(ImageError, match="cut.tif"):
        open_image(path)


def test_missing_empty_and_non_image_files(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        open_image(tmp_path / "absent.tif")
    with pytest.raises(ImageError, match="folder"):
        open_image(tmp_path)
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        open_image(tmp_path / "empty.tif")
    (tmp_path / "notes.tif").write_text("not an image at all")
    with pytest.raises(ImageError, match="notes.tif: not a TIFF, PNG or JPEG"):
        open_image(tmp_path / "notes.tif")


def test_corrupt_tile_fails_only_where_read(tmp_path):
    """A region read decodes only the tiles it touches: a garbled far tile does not matter."""
    data = np.arange(64 * 96, dtype=np.uint16).reshape(64, 96)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, data, tile=(32, 32), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offsets, counts = tif.pages[0].dataoffsets, tif.pages[0].databytecounts
    raw = bytearray(path.read_bytes())
    last = len(offsets) - 1  # bottom-right tile: rows 32..63, columns 64..95
    raw[offsets[last]: offsets[last] + counts[last]] = b"\x00" * counts[last]
    path.write_bytes(bytes(raw))
    with open_image(path) as image:
        np.testing.assert_array_equal(image.read(region=(0, 0, 40, 60)), data[:40, :60])
        with pytest.raises(ImageError, match="tiled.tif: cannot decode"):
            image.read()


# ---------------------------------------------------------------------------------- OME-TIFF


def _stack(c: int = 2, z: int = 3, h: int = 70, w: int = 90, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, (c, z, h, w), dtype=np.uint16)


def test_write_and_read_ome_tiff(tmp_path):
    data = _stack()
    path = write_tiff(tmp_path / "s.ome.tif", data, "CZYX", channel_names=["DAPI", "SOX9"],
                      pixel_size_um=0.325, z_spacing_um=2.0, tile=(32, 32))
    with open_image(path) as image:
        info = image.info
        assert info.format == "ome-tiff" and info.axes == "CZYX" and info.shape == (2, 3, 70, 90)
        assert info.channel_names == ("DAPI", "SOX9") and info.n_channels == 2 and info.n_planes == 3
        assert info.pixel_size_um == pytest.approx(0.325) and info.z_spacing_um == pytest.approx(2.0)
        assert info.levels == ((70, 90),)
        np.testing.assert_array_equal(image.read(), data)
        np.testing.assert_array_equal(image.read(channel="SOX9", z=1), data[1, 1])
        np.testing.assert_array_equal(image.read(channel=0), data[0])
        np.testing.assert_array_equal(image.read(channel=["SOX9", "DAPI"], z=[2, 0]), data[::-1][:, [2, 0]])
        np.testing.assert_array_equal(image.read(z=2, region=(10, 20, 50, 40)), data[:, 2, 10:50, 20:40])
        assert image.channel_index("sox9") == 1  # case-insensitive fallback
    with tifffile.TiffFile(path) as tif:  # what other readers see: tiled, deflate + predictor
        page = tif.pages[0]
        assert page.is_tiled and page.compression == 8 and page.predictor == 2
        assert page.resolutionunit == 3 and page.resolution[0] == pytest.approx(1e4 / 0.325)


def test_region_beyond_border_is_zero_padded(tmp_path):
    data = _stack(c=1, z=1, h=20, w=30)[0, 0]
    path = write_tiff(tmp_path / "p.ome.tif", data, "YX", tile=(16, 16))
    with open_image(path) as image:
        out = image.read(region=(-3, 25, 5, 35))
    expected = np.zeros((8, 10), np.uint16)
    expected[3:, :5] = data[:5, 25:30]  # rows -3..-1 and columns 30..34 are outside: zeros
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint16


def test_pyramid_levels_are_2x_means(tmp_path):
    data = _stack(c=2, z=1, h=150, w=100)[:, 0]
    path = write_tiff(tmp_path / "pyr.ome.tif", data, "CYX", pyramid=True, tile=(32, 32))
    with open_image(path) as image:
        assert image.info.levels == ((150, 100), (75, 50), (38, 25), (19, 13))
        level = data
        for number in range(1, 4):
            level = halve(level)
            np.testing.assert_array_equal(image.read(level=number), level)
        np.testing.assert_array_equal(image.read(channel=1, level=2, region=(5, 6, 20, 20)),
                                      level_at(data, 2)[1, 5:20, 6:20])
        with pytest.raises(ImageError, match="no resolution level 4"):
            image.read(level=4)


def level_at(data: np.ndarray, number: int) -> np.ndarray:
    for _ in range(number):
        data = halve(data)
    return data


def test_halve_by_hand():
    block = np.array([[0, 2, 9], [4, 6, 9], [1, 1, 5]], dtype=np.uint8)
    np.testing.assert_array_equal(halve(block), [[3, 9], [1, 5]])  # odd edges repeat
    np.testing.assert_array_equal(halve(block, "nearest"), [[0, 9], [1, 5]])


def test_write_from_tile_iterator_and_callable(tmp_path):
    data = _stack(c=3, z=1, h=100, w=75)[:, 0]
    tile = (32, 32)

    def tiles():
        for c in range(3):
            for y in range(0, 100, 32):
                for x in range(0, 75, 32):
                    yield data[c, y:y + 32, x:x + 32]

    calls = []

    def region(y0, x0, y1, x1):
        calls.append((y0, x0, y1, x1))
        return data[:, y0:y1, x0:x1]

    a = write_tiff(tmp_path / "it.ome.tif", tiles(), "CYX", shape=data.shape, dtype=data.dtype,
                   tile=tile, pyramid=True, channel_names=["a", "b", "c"])
    b = write_tiff(tmp_path / "fn.ome.tif", region, "CYX", shape=data.shape, dtype=data.dtype,
                   tile=tile, pyramid=True)
    assert len(calls) == 4 * 3  # once per tile, not once per tile and channel
    for path in (a, b):
        with open_image(path) as image:
            np.testing.assert_array_equal(image.read(), data)
            np.testing.assert_array_equal(image.read(level=1), halve(data))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fn.ome.tif", "it.ome.tif"]  # spools gone


def test_write_from_memmap_uncompressed(tmp_path):
    data = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(40, 50))
    data[:] = np.linspace(0, 1, 2000, dtype=np.float32).reshape(40, 50)
    path = write_tiff(tmp_path / "raw.ome.tif", data, "YX", compression=None, tile=(16, 16))
    with open_image(path) as image:
        np.testing.assert_array_equal(image.read(region=(3, 4, 30, 33)), data[3:30, 4:33])


def test_bad_tile_stream_leaves_target_untouched(tmp_path):
    target = tmp_path / "keep.ome.tif"
    target.write_bytes(b"old")
    short = (np.zeros((16, 16), np.uint8) for _ in range(3))  # 4 tiles needed
    with pytest.raises(ValueError, match="stopped after 3 tiles"):
        write_tiff(target, short, "YX", shape=(32, 32), dtype=np.uint8, tile=(16, 16))
    too_many = (np.zeros((16, 16), np.uint8) for _ in range(5))
    with pytest.raises(ValueError, match="more than the 4"):
        write_tiff(target, too_many, "YX", shape=(32, 32), dtype=np.uint8, tile=(16, 16))
    wrong = (np.zeros((8, 8), np.uint8) for _ in range(4))
    with pytest.raises(ValueError, match="has shape"):
        write_tiff(target, wrong, "YX", shape=(32, 32), dtype=np.uint8, tile=(16, 16))
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.ome.tif"]


def test_write_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="axes"):
        write_tiff(tmp_path / "a.tif", np.zeros((4, 16, 16), np.uint8), "TYX")
    with pytest.raises(ValueError, match="channel names"):
        write_tiff(tmp_path / "a.tif", np.zeros((2, 16, 16), np.uint8), "CYX", channel_names=["x"])
    with pytest.raises(ValueError, match="shape= and dtype="):
        write_tiff(tmp_path / "a.tif", iter([]), "YX")
    with pytest.raises(ValueError, match="multiples of 16"):
        write_tiff(tmp_path / "a.tif", np.zeros((16, 16), np.uint8), "YX", tile=(10, 10))


def test_write_creates_folder(tmp_path):
    path = write_tiff(tmp_path / "new" / "x.ome.tif", np.ones((16, 16), np.uint8), "YX", tile=(16, 16))
    assert read_image(path).sum() == 256


def test_ome_nanometre_pixel_size(tmp_path):
    path = tmp_path / "nm.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint8), ome=True, photometric="minisblack",
                     metadata={"axes": "ZYX", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeZ": 1.5, "PhysicalSizeZUnit": "mm"})
    info = open_image(path).info
    assert info.axes == "ZYX" and info.pixel_size_um == pytest.approx(0.25)
    assert info.z_spacing_um == pytest.approx(1500.0)


# ---------------------------------------------------------------------------------- ImageJ, plain TIFF


def test_imagej_hyperstack(tmp_path):
    data = np.random.default_rng(3).integers(0, 4000, (3, 4, 20, 30), dtype=np.uint16)  # Z, C, Y, X
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.2, 1 / 0.2),
                     metadata={"axes": "ZCYX", "unit": "um", "spacing": 0.5,
                               "Labels": ["DAPI", "SOX9", "PNA", "AR"] * 3})
    with open_image(path) as image:
        info = image.info
        assert info.format == "imagej-tiff" and info.axes == "CZYX" and info.shape == (4, 3, 20, 30)
        assert info.channel_names == ("DAPI", "SOX9", "PNA", "AR")
        assert info.pixel_size_um == pytest.approx(0.2) and info.z_spacing_um == pytest.approx(0.5)
        np.testing.assert_array_equal(image.read(), data.transpose(1, 0, 2, 3))
        np.testing.assert_array_equal(image.read(channel="PNA", z=2), data[2, 2])


def test_imagej_micron_unit_in_nm(tmp_path):
    path = tmp_path / "nm.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), imagej=True, resolution=(0.01, 0.01),
                     metadata={"unit": "nm"})
    assert open_image(path).info.pixel_size_um == pytest.approx(0.1)


@pytest.mark.parametrize("unit, resolution, expected", [
    ("CENTIMETER", 40000.0, 0.25),  # 40000 px/cm = 0.25 um
    ("INCH", 50800.0, 0.5),         # 50800 dpi = 0.5 um
    ("INCH", 72.0, None),           # editors' default: not a calibration
    ("NONE", 5.0, None),
])
def test_plain_tiff_resolution(tmp_path, unit, resolution, expected):
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), resolution=(resolution, resolution), resolutionunit=unit)
    size = open_image(path).info.pixel_size_um
    assert size == (pytest.approx(expected) if expected else None)


def test_rgb_and_rgba_tiff_become_channels(tmp_path):
    rgba = np.random.default_rng(4).integers(0, 255, (10, 12, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    tifffile.imwrite(tmp_path / "rgb.tif", rgba[..., :3], photometric="rgb", tile=(16, 16), compression="zlib")
    for name in ("rgba.tif", "rgb.tif"):
        with open_image(tmp_path / name) as image:
            assert image.info.axes == "CYX" and image.info.channel_names == ("R", "G", "B")
            np.testing.assert_array_equal(image.read(), rgba[..., :3].transpose(2, 0, 1))
            np.testing.assert_array_equal(image.read(channel="G", region=(2, 3, 8, 9)), rgba[2:8, 3:9, 1])


def test_plain_multipage_is_channels_unless_told(tmp_path):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for value in range(3):
            tif.write(np.full((6, 7), value, np.uint8), metadata=None)
    with open_image(path) as image:
        assert image.info.axes == "CYX" and image.info.channel_names == ("C0", "C1", "C2")
        assert image.read(channel="C2").max() == 2
    with open_image(path, axes="ZYX") as image:
        assert image.info.axes == "ZYX" and image.info.n_planes == 3 and image.info.n_channels == 1
        assert image.read(z=1).max() == 1
    with pytest.raises(ImageError, match="do not fit"):
        open_image(path, axes="CZYX")


def test_time_series_and_complex_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "movie.tif", np.zeros((5, 8, 8), np.uint8), imagej=True,
                     metadata={"axes": "TYX"})
    with pytest.raises(ImageError, match="movie.tif: a time series"):
        open_image(tmp_path / "movie.tif")
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((1, 8, 8), np.uint8), imagej=True, metadata={"axes": "TYX"})
    assert open_image(tmp_path / "one.tif").info.axes == "YX"  # singleton T is dropped
    tifffile.imwrite(tmp_path / "cplx.tif", np.zeros((8, 8), np.complex64))
    with pytest.raises(ImageError, match="cplx.tif: pixels of type complex64"):
        open_image(tmp_path / "cplx.tif")


def test_require_dtype(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((8, 8), np.float64))
    with open_image(tmp_path / "f.tif") as image:
        with pytest.raises(ImageError, match=r"f.tif: pixels are float64, but training needs uint8 or uint16"):
            require_dtype(image, ["uint8", np.uint16], purpose="training")
        assert require_dtype(image.info, [np.float32, np.float64]) == np.float64


def test_selection_errors_name_file_and_choices(tmp_path):
    path = write_tiff(tmp_path / "sel.ome.tif", _stack(h=20, w=20), "CZYX", channel_names=["DAPI", "SOX9"],
                      tile=(16, 16))
    with open_image(path) as image:
        with pytest.raises(ImageError, match=r"sel.ome.tif: no channel 'PNA'.*0: DAPI, 1: SOX9"):
            image.read(channel="PNA")
        with pytest.raises(ImageError, match="no channel 2"):
            image.read(channel=2)
        with pytest.raises(ImageError, match="no z-plane 3; the image has 3 plane"):
            image.read(z=3)
        with pytest.raises(ImageError, match="outside the image"):
            image.read(region=(20, 0, 30, 10))
        with pytest.raises(ImageError, match="empty region"):
            image.read(region=(5, 5, 5, 9))
    with pytest.raises(ImageError, match="closed"):
        image.read()


def test_single_channel_selection_on_gray_image(tmp_path):
    path = write_tiff(tmp_path / "g.ome.tif", np.arange(256, dtype=np.uint16).reshape(16, 16), "YX",
                      channel_names=["DAPI"], tile=(16, 16))
    with open_image(path) as image:
        assert image.info.channel_names == ("DAPI",)
        assert image.read(channel="DAPI").shape == (16, 16)
        assert image.read(channel=["DAPI"]).shape == (1, 16, 16)


# ---------------------------------------------------------------------------------- PNG / JPEG


def test_png_and_jpeg(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 255, (12, 10, 4), dtype=np.uint8)
    PILImage.fromarray(rgb, "RGBA").save(tmp_path / "c.png", dpi=(25400 / 0.5, 25400 / 0.5))
    gray16 = np.arange(120, dtype=np.uint16).reshape(12, 10) * 500
    PILImage.fromarray(gray16).save(tmp_path / "g.png")
    PILImage.fromarray(rgb[..., 0]).save(tmp_path / "j.jpg", quality=95, dpi=(72, 72))
    with open_image(tmp_path / "c.png") as image:
        assert image.info.format == "png" and image.info.axes == "CYX"
        assert image.info.channel_names == ("R", "G", "B")  # alpha dropped
        assert image.info.pixel_size_um == pytest.approx(0.5, rel=1e-3)
        np.testing.assert_array_equal(image.read(), rgb[..., :3].transpose(2, 0, 1))
    with open_image(tmp_path / "g.png") as image:
        assert image.info.dtype == np.uint16 and image.info.axes == "YX"
        np.testing.assert_array_equal(image.read(region=(1, 2, 5, 6)), gray16[1:5, 2:6])
    with open_image(tmp_path / "j.jpg") as image:
        assert image.info.format == "jpeg" and image.info.shape == (12, 10) and image.info.pixel_size_um is None
        assert np.abs(image.read().astype(int) - rgb[..., 0]).mean() < 8  # lossy


def test_truncated_png_raises_image_error(tmp_path):
    noise = np.random.default_rng(6).integers(0, 255, (64, 64), dtype=np.uint8)
    PILImage.fromarray(noise).save(tmp_path / "n.png")
    data = (tmp_path / "n.png").read_bytes()
    (tmp_path / "n.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="n.png"):
        read_image(tmp_path / "n.png")


def test_read_image_copy_is_independent(tmp_path, shared_data):
    source = shared_data / "stardist-sample" / "img2d.tif"
    copy = tmp_path / "copy.tif"
    shutil.copy(source, copy)
    data = read_image(copy)
    # the result owns its memory: no memory map that would keep the file open (Windows) or change with it
    assert type(data) is np.ndarray and data.flags.writeable and data.flags.owndata
    os.remove(copy)
    assert data.shape == (512, 512) and int(data.max()) > 0


# ---------------------------------------------------------------------------------- module split

# every public name app.core.images held before it was split into lazy_image, tiff_reader, pillow_reader,
# image_axes, image_metadata, pixel_checks and memory_guard (issue 13): importers, tests and bench use them
IMAGES_PUBLIC_NAMES = (
    "ChannelKey", "DEFAULT_MEMORY_LIMIT", "IMAGE_SUFFIXES", "Image", "ImageError", "ImageInfo", "LIBRARY_FORMATS",
    "PIXEL_SIZE_RANGE_UM", "PathLike", "RGB_NAMES", "Region", "SCREEN_DPI", "SMALL_READ_BYTES", "TileSource",
    "UserError", "available_memory", "check_fits_memory", "halve", "image_format", "is_image_path", "label_ids",
    "list_channel_names", "list_images", "open_image", "plausible_pixel_size", "read_image", "require_dtype",
    "split_scene", "write_tiff",
)


def test_every_public_name_is_still_importable_from_app_core_images():
    import app.core.images as images

    missing = [name for name in IMAGES_PUBLIC_NAMES if not hasattr(images, name)]
    assert missing == [] and sorted(images.__all__) == sorted(IMAGES_PUBLIC_NAMES)


def test_image_modules_stay_under_500_lines():
    core = Path(__file__).resolve().parents[1] / "app" / "core"
    sizes = {p.name: len(p.read_text().splitlines()) for p in core.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 500} == {}
