"""Reader for plain raster images (PNG, JPEG, TIFF, BMP) through Pillow.

Raster images carry no modality, no Hounsfield units and no window: they are already a picture
(often an 8-bit export or a screenshot of a viewer), so the reader only turns their pixels into
grey levels in [0, 1] and leaves ``Scan.raw`` and ``Scan.window`` empty.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from lunglens.errors import CorruptFile, ImageTooLarge, ScanError
from lunglens.io.scan import Modality, Scan
from lunglens.io.sniff import DEFAULT_MAX_PIXELS, check_pixels, check_size

# Pillow's own decompression-bomb limit is LungLens' one limit (it warns above it, which
# :func:`load_raster` replaces by a refusal, and raises itself only above twice it).
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS

#: Longest side kept when decoding a raster image. Larger images are reduced by an integer factor
#: while they are read (JPEG: DCT scaling through ``draft``, 1/2 to 1/8, before any pixel is
#: decoded; other formats: box-averaged in strips right after decoding), so what stays in memory
#: is at most 4096x4096 float32 (64 MB) whatever the file. The models see 128-224 px and a laptop
#: screen 1-2 k, so nothing the app shows or scores is lost. Peak memory of one decode is the
#: file's decoded size in its own mode (PNG/TIFF/BMP: 1-4 bytes per pixel, at most 4 x
#: DEFAULT_MAX_PIXELS = 800 MB; JPEG: a quarter to a sixty-fourth of that) plus under 250 MB
#: (measured: a 13000x13000 RGB PNG peaks at 0.92 GB RSS in ``classify``, 5.4 GB before; README
#: "Speed and memory").
MAX_DECODED_SIDE = 4096

#: Pillow modes that ``Image.reduce`` cannot average (or must not: palette indices), and the
#: mode they are averaged in.
_REDUCE_AS = {"1": "L", "P": "RGBA", "PA": "RGBA", "I;16": "I", "I;16B": "I", "I;16L": "I"}
#: Rows of the original image reduced at a time (per factor), bounding the converted copy.
_STRIP_ROWS = 256

#: EXIF Orientation (0x0112) -> the transposition that shows the image upright (as
#: ``ImageOps.exif_transpose``), applied after a reduced decode too.
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

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


def colourfulness(rgb: np.ndarray) -> float:
    """Colourfulness of an ``[..., 3]`` RGB image on the 0-255 scale (Hasler & Susstrunk 2003).

    ``M = sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2)`` with ``rg = R - G`` and
    ``yb = (R + G) / 2 - B``: 0 for a grey image, about 15 "slightly", 33 "moderately" and 45+
    "quite" colourful in their observer study. Large images are subsampled to ~250k pixels.
    """
    px = np.asarray(rgb, dtype=np.float64).reshape(-1, rgb.shape[-1])[:, :3]
    px = px[:: max(1, len(px) // 250_000)]
    if px.size == 0:
        return 0.0
    rg = px[:, 0] - px[:, 1]
    yb = 0.5 * (px[:, 0] + px[:, 1]) - px[:, 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _to_grey(im: Image.Image, notes: list[str]) -> tuple[np.ndarray, str, float]:
    """Convert any Pillow mode to float32 grey [0, 1].

    Returns the image, a bit-depth label and the colourfulness of the original colours (0 for
    grey modes), which the chest-image gate uses to refuse colour photographs.
    """
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / np.float32(255.0), "8", 0.0
    if mode.startswith("I;16") or mode == "I":
        grey, bits = bit_range_scale(np.asarray(im))
        notes.append(f"{mode} image scaled by its bit range: /{2**bits - 1} ({bits}-bit data)")
        return grey, f"{bits} (stored 16/32)", 0.0
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        notes.append(f"floating-point image stretched from [{lo:g}, {hi:g}] to [0, 1]")
        arr = (arr - lo) / max(hi - lo, 1e-12)
        return np.nan_to_num(arr).astype(np.float32), "32f", 0.0
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.float32) / np.float32(255.0), "1", 0.0
    # Palette (P/PA, including tRNS transparency), LA, RGB(A), CMYK, YCbCr: go through RGBA so
    # every case gets an alpha channel, then composite on black (transparent = no signal).
    # In strips of rows: the float RGBA copy is 16 bytes per pixel, 256 MB for a 4096x4096 image.
    width, height = im.size
    grey = np.empty((height, width), np.float32)
    spread = 0.0
    alpha_min = 1.0
    step = max(1, int(np.sqrt(width * height / 250_000)))  # ~250k pixels for colourfulness
    picked: list[np.ndarray] = []
    for top in range(0, height, _STRIP_ROWS):
        bottom = min(height, top + _STRIP_ROWS)
        strip = im.crop((0, top, width, bottom)).convert("RGBA")
        rgba = np.asarray(strip, dtype=np.float32) / np.float32(255.0)
        rgb, alpha = rgba[..., :3], rgba[..., 3]
        spread = max(spread, float(np.ptp(rgb, axis=-1).max(initial=0.0)))
        alpha_min = min(alpha_min, float(alpha.min(initial=1.0)))
        grey[top:bottom] = np.clip((rgb @ _LUMA) * alpha, 0.0, 1.0)
        rows = (np.arange(top, bottom) % step) == 0
        picked.append((rgb * alpha[..., None])[rows, ::step].reshape(-1, 3))
    if mode not in ("P", "L", "LA") and spread > 8 / 255:
        notes.append(f"colour image ({mode}) converted to grey (BT.601 luma)")
    if alpha_min < 1.0:
        notes.append("transparent pixels composited on black")
    colour = colourfulness(np.concatenate(picked)) * 255.0 if mode not in ("L", "LA") else 0.0
    return grey, "8", colour


def reduce_factor(width: int, height: int, max_side: int = MAX_DECODED_SIDE) -> int:
    """Smallest integer factor that brings the longest side to ``max_side`` or less."""
    return max(1, -(-max(width, height) // max_side))


def _reduced(im: Image.Image, factor: int) -> Image.Image:
    """``im`` box-averaged by ``factor``, in strips so that only one strip is ever converted."""
    mode = _REDUCE_AS.get(im.mode, im.mode)
    width, height = im.size
    out = Image.new(mode, (-(-width // factor), -(-height // factor)))
    step = factor * _STRIP_ROWS
    for top in range(0, height, step):
        strip = im.crop((0, top, width, min(height, top + step)))
        if strip.mode != mode:
            strip = strip.convert(mode)
        out.paste(strip.reduce(factor), (0, top // factor))
    return out


def _bomb_pixels(exc: Exception) -> int | None:
    """The pixel count in Pillow's DecompressionBombError message, if it states one."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found.group(1)) if found else None


def _decode_opened(
    im: Image.Image, path: Path, max_pixels: int, notes: list[str]
) -> tuple[np.ndarray, dict[str, str], float]:
    """Check and decode an opened image: the grey pixels, their metadata (format, mode, bit
    depth) and the colourfulness of colour pixels (0 for grey)."""
    fmt = im.format or "?"
    if fmt not in _FORMATS:
        raise CorruptFile(path, f"{fmt} images are not supported")
    width, height = im.size
    check_pixels(path, width * height, max_pixels, "the image")
    check_size(path, height, width, "the image")
    n_frames = int(getattr(im, "n_frames", 1))
    if n_frames > 1:
        notes.append(f"{n_frames} pages/frames in the file; the first one is used")
    orientation = im.getexif().get(0x0112, 1)
    factor = reduce_factor(width, height)
    if factor > 1 and fmt in ("JPEG", "MPO"):
        # DCT scaling: decodes at 1/2..1/8 size directly (never the full image)
        im.draft(im.mode, (-(-width // factor), -(-height // factor)))
    im.load()
    shown: Image.Image = im
    factor = reduce_factor(*im.size)
    if factor > 1:
        shown = _reduced(im, factor)
    if shown.size != (width, height):
        notes.append(
            f"large image reduced while decoding ({width}x{height} -> "
            f"{shown.size[0]}x{shown.size[1]}) to bound memory"
        )
    if orientation in _ORIENT:
        shown = shown.transpose(_ORIENT[orientation])
        notes.append("rotated according to its EXIF orientation")
    mode = shown.mode
    grey, bits, colour = _to_grey(shown, notes)
    return grey, {"format": fmt, "mode": mode, "bit_depth": bits}, colour


def load_raster(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Scan:
    """Load a PNG/JPEG/TIFF/BMP file as a one-slice :class:`Scan` of modality ``"unknown"``.

    The pixel count and the size are read from the header and checked against ``max_pixels``
    and :data:`~lunglens.io.sniff.MIN_SCAN_SIDE` *before* decoding; Pillow's own
    ``MAX_IMAGE_PIXELS`` warning is silenced because this check replaces it (and a warning is
    not a refusal). Images larger than :data:`MAX_DECODED_SIDE` are reduced while decoding,
    with a note. Only the first frame of a multi-page TIFF is used.

    Raises
    ------
    ImageTooLarge
        More pixels than ``max_pixels``.
    ImageTooSmall
        A side shorter than :data:`~lunglens.io.sniff.MIN_SCAN_SIDE`.
    CorruptFile
        Pillow cannot identify or fully decode the file (truncated, damaged).
    """
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                grey, decoded, colour = _decode_opened(im, path, max_pixels, notes)
    except ScanError:
        raise
    except Image.DecompressionBombError as exc:
        pixels = _bomb_pixels(exc)  # Pillow refused it first (above twice the limit)
        if pixels is not None:
            check_pixels(path, pixels, max_pixels, "the image")
        raise ImageTooLarge(
            path, f"the image has more pixels than the limit of {max_pixels:,} ({exc})"
        ) from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, ...
        raise CorruptFile(
            path,
            f"cannot decode the image, it is truncated or damaged ({type(exc).__name__}: {exc})",
            "Export or copy it again.",
        ) from exc
    if grey.size == 0:
        raise CorruptFile(path, "the image has no pixels")
    metadata = {
        "format": decoded["format"],
        "mode": decoded["mode"],
        "rows": str(grey.shape[0]),
        "columns": str(grey.shape[1]),
        "bit_depth": decoded["bit_depth"],
    }
    if colour > 0:
        metadata["colourfulness"] = f"{colour:.1f}"
    return Scan(
        source=str(path),
        image=grey,
        modality=Modality.UNKNOWN,
        kind="raster",
        metadata=metadata,
        notes=notes,
    )
