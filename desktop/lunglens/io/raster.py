"""Reader for plain raster images (PNG, JPEG, TIFF, BMP) through Pillow.

Raster images carry no modality, no Hounsfield units and no window: they are already a picture
(often an 8-bit export or a screenshot of a viewer), so the reader only turns their pixels into
grey levels in [0, 1] and leaves ``Scan.raw`` and ``Scan.window`` empty.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from lunglens.errors import CorruptFile, ScanError
from lunglens.io.scan import Scan
from lunglens.io.sniff import DEFAULT_MAX_PIXELS, check_pixels

#: ITU-R BT.601 luma weights, the ones Pillow's ``convert("L")`` uses, kept in float so an
#: RGB export of a grey image round-trips exactly.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_FORMATS = frozenset({"PNG", "JPEG", "MPO", "TIFF", "BMP", "DIB"})


def bit_range_scale(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Scale integer grey levels of a 16/32-bit image to [0, 1] by their *actual* bit range.

    Many 16-bit exports hold 10-, 12- or 14-bit detector data, so dividing by 65535 would give
    a nearly black picture. The divisor is ``2**b - 1`` where ``b`` is the smallest bit depth of
    at least 8 that holds the image's maximum (a 12-bit image stored in 16 bits -> ``/4095``; a
    full-range 16-bit image -> ``/65535``). Unlike min-max stretching this keeps the absolute
    grey levels the modality wrote, and two images of one detector stay comparable.

    Returns
    -------
    tuple
        The float32 image in [0, 1] and the bit depth ``b`` used.
    """
    vmax = int(values.max()) if values.size else 0
    vmin = int(values.min()) if values.size else 0
    shift = -vmin if vmin < 0 else 0  # signed 32-bit TIFF: move to >= 0 first
    bits = max(8, (vmax + shift).bit_length())
    out = (values.astype(np.float64) + shift) / float(2**bits - 1)
    return np.clip(out, 0.0, 1.0).astype(np.float32), bits


def _to_grey(im: Image.Image, notes: list[str]) -> tuple[np.ndarray, str]:
    """Convert any Pillow mode to float32 grey [0, 1]; returns the image and a bit-depth label."""
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / np.float32(255.0), "8"
    if mode.startswith("I;16") or mode == "I":
        grey, bits = bit_range_scale(np.asarray(im))
        notes.append(f"{mode} image scaled by its bit range: /{2**bits - 1} ({bits}-bit data)")
        return grey, f"{bits} (stored 16/32)"
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        notes.append(f"floating-point image stretched from [{lo:g}, {hi:g}] to [0, 1]")
        arr = (arr - lo) / max(hi - lo, 1e-12)
        return np.nan_to_num(arr).astype(np.float32), "32f"
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.float32) / np.float32(255.0), "1"
    # Palette (P/PA, including tRNS transparency), LA, RGB(A), CMYK, YCbCr: go through RGBA so
    # every case gets an alpha channel, then composite on black (transparent = no signal).
    rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / np.float32(255.0)
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if mode not in ("P", "L", "LA") and float(np.ptp(rgb, axis=-1).max(initial=0.0)) > 8 / 255:
        notes.append(f"colour image ({mode}) converted to grey (BT.601 luma)")
    if float(alpha.min(initial=1.0)) < 1.0:
        notes.append("transparent pixels composited on black")
    grey = (rgb @ _LUMA) * alpha
    return np.clip(grey, 0.0, 1.0).astype(np.float32), "8"


def load_raster(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Scan:
    """Load a PNG/JPEG/TIFF/BMP file as a one-slice :class:`Scan` of modality ``"unknown"``.

    The pixel count is read from the header and checked against ``max_pixels`` *before*
    decoding; Pillow's own ``MAX_IMAGE_PIXELS`` warning is silenced because this check replaces
    it (and a warning is not a refusal). Only the first frame of a multi-page TIFF is used.

    Raises
    ------
    ImageTooLarge
        More pixels than ``max_pixels``.
    CorruptFile
        Pillow cannot identify or fully decode the file (truncated, damaged).
    """
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = im.format or "?"
                if fmt not in _FORMATS:
                    raise CorruptFile(path, f"{fmt} images are not supported")
                width, height = im.size
                check_pixels(path, width * height, max_pixels, "the image")
                n_frames = int(getattr(im, "n_frames", 1))
                if n_frames > 1:
                    notes.append(f"{n_frames} pages/frames in the file; the first one is used")
                im.load()
                shown: Image.Image = im
                if im.getexif().get(0x0112, 1) not in (1, None):  # EXIF Orientation tag
                    shown = ImageOps.exif_transpose(im)
                    notes.append("rotated according to its EXIF orientation")
                mode = shown.mode
                grey, bits = _to_grey(shown, notes)
    except ScanError:
        raise
    except Image.DecompressionBombError as exc:
        check_pixels(path, max_pixels + 1, max_pixels, f"the image ({exc})")
        raise  # unreachable: check_pixels raised
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, ...
        raise CorruptFile(
            path,
            f"cannot decode the image, it is truncated or damaged ({type(exc).__name__}: {exc})",
            "Export or copy it again.",
        ) from exc
    if grey.size == 0:
        raise CorruptFile(path, "the image has no pixels")
    metadata = {
        "format": fmt,
        "mode": mode,
        "rows": str(grey.shape[0]),
        "columns": str(grey.shape[1]),
        "bit_depth": bits,
    }
    return Scan(
        source=str(path),
        image=grey,
        modality="unknown",
        kind="raster",
        metadata=metadata,
        notes=notes,
    )
