"""Raster reader: generated PNG/JPEG/TIFF/BMP fixtures with known pixel values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lunglens.io import load_scan
from lunglens.io.raster import bit_range_scale

LUMA = np.array([0.299, 0.587, 0.114])


def _grad8() -> np.ndarray:
    return np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))  # 32 x 64, 0..252


@pytest.mark.parametrize("fmt", ["png", "bmp", "tiff"])
def test_8bit_grey_exact(tmp_path: Path, fmt: str) -> None:
    arr = _grad8()
    path = tmp_path / f"g.{fmt}"
    Image.fromarray(arr, "L").save(path)
    scan = load_scan(path)
    assert scan.kind == "raster" and scan.modality == "unknown" and scan.raw is None
    assert scan.image.shape == (1, 32, 64) and scan.image.dtype == np.float32
    assert np.array_equal(scan.image[0], arr.astype(np.float32) / 255)


def test_jpeg_grey_close(tmp_path: Path) -> None:
    arr = np.full((32, 32), 100, np.uint8)
    arr[:, 16:] = 200
    path = tmp_path / "g.jpg"
    Image.fromarray(arr).save(path, quality=95)
    im = load_scan(path).image[0]
    assert abs(im[:, :8].mean() - 100 / 255) < 0.01 and abs(im[:, -8:].mean() - 200 / 255) < 0.01


@pytest.mark.parametrize(
    ("fmt", "vmax", "divisor"),
    [
        ("png", 4095, 4095),  # 12-bit detector data in a 16-bit PNG -> /4095
        ("png", 65535, 65535),  # full-range 16-bit -> /65535
        ("tiff", 1023, 1023),  # 10-bit in a 16-bit TIFF
        ("tiff", 200, 255),  # never below 8 bits
    ],
)
def test_16bit_scaled_by_actual_bit_range(
    tmp_path: Path, fmt: str, vmax: int, divisor: int
) -> None:
    arr = np.linspace(0, vmax, 64 * 32).astype(np.uint16).reshape(32, 64)
    path = tmp_path / f"w.{fmt}"
    Image.fromarray(arr).save(path)
    scan = load_scan(path)
    assert np.allclose(scan.image[0], arr / divisor, atol=1e-6)
    assert scan.image.max() == pytest.approx(vmax / divisor)


def test_bit_range_scale_signed() -> None:
    out, bits = bit_range_scale(np.array([[-10, 0, 245]], dtype=np.int32))
    assert bits == 8 and out.min() == 0 and out.max() == 1.0


def test_rgb_to_luma(tmp_path: Path) -> None:
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:16] = (200, 100, 50)
    arr[16:] = (90, 90, 90)
    path = tmp_path / "c.png"
    Image.fromarray(arr, "RGB").save(path)
    scan = load_scan(path)
    assert scan.image[0, 0, 0] == pytest.approx(float(LUMA @ [200, 100, 50]) / 255, abs=1e-6)
    assert scan.image[0, 31, 31] == pytest.approx(90 / 255, abs=1e-6)  # grey stays grey
    assert any("colour" in n for n in scan.notes)


def test_rgba_composited_on_black(tmp_path: Path) -> None:
    arr = np.zeros((32, 96, 4), np.uint8)
    arr[..., :3] = 255
    arr[:, :32, 3] = 255  # opaque white
    arr[:, 32:64, 3] = 128  # half transparent white
    arr[:, 64:, 3] = 0  # fully transparent white -> black
    path = tmp_path / "a.png"
    Image.fromarray(arr, "RGBA").save(path)
    im = load_scan(path).image[0]
    assert im[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert im[0, 32] == pytest.approx(128 / 255, abs=1e-6)
    assert im[0, 64] == 0.0


def test_palette_image(tmp_path: Path) -> None:
    im = Image.new("P", (4, 2))
    palette = [0, 0, 0, 255, 0, 0, 30, 60, 90] + [0] * (253 * 3)
    im.putpalette(palette)
    im.putdata([0, 1, 2, 1, 2, 0, 1, 2])
    im = im.resize((128, 64), Image.Resampling.NEAREST)  # 32x32 blocks: large enough for a scan
    path = tmp_path / "p.png"
    im.save(path)
    out = load_scan(path).image[0]
    assert out[0, 0] == 0.0
    assert out[0, 32] == pytest.approx(0.299, abs=1e-6)  # pure red
    assert out[0, 64] == pytest.approx(float(LUMA @ [30, 60, 90]) / 255, abs=1e-6)


def test_rgb_bmp_and_multipage_tiff(tmp_path: Path) -> None:
    bmp = tmp_path / "c.bmp"
    Image.fromarray(np.full((32, 40, 3), (10, 20, 30), np.uint8)).save(bmp)
    assert load_scan(bmp).image[0, 1, 1] == pytest.approx(
        float(LUMA @ [10, 20, 30]) / 255, abs=1e-6
    )
    tif = tmp_path / "m.tiff"
    pages = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (50, 150)]
    pages[0].save(tif, save_all=True, append_images=pages[1:])
    scan = load_scan(tif)
    assert scan.image[0, 0, 0] == pytest.approx(50 / 255) and any("first" in n for n in scan.notes)


def test_reader_is_chosen_by_content_not_extension(tmp_path: Path) -> None:
    png_named_jpg = tmp_path / "really_png.jpg"
    Image.fromarray(_grad8()).save(png_named_jpg, format="PNG")
    assert load_scan(png_named_jpg).metadata["format"] == "PNG"


def test_real_dataset_jpegs(shared_data: Path) -> None:
    for sub in ("ct-covid-binary/covid", "cxr-3class/normal"):
        path = next((shared_data / sub).glob("*.jpg"))
        scan = load_scan(path)
        assert scan.n_slices == 1 and 0.0 <= scan.image.min() < scan.image.max() <= 1.0
