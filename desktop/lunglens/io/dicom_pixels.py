"""DICOM pixel decoding: transfer syntaxes, photometric interpretation and the modality LUT.

As pydicom separates its pixel handling (``pydicom.pixels``: decoders per transfer syntax, then
``apply_modality_lut``) from the data set, this module turns a parsed data set into modality
values (Hounsfield units for CT)::

    Transfer Syntax (0002,0010) checked against the installed decoders
      -> decode (pydicom + pylibjpeg plugins; libjpeg directly for retired JPEG processes)
      -> Photometric Interpretation (0028,0004): colour / palette -> grey, frames as [F, H, W]
      -> modality LUT (RescaleSlope/Intercept per frame, or the Modality LUT Sequence)

Display (VOI) is the next step, :mod:`lunglens.io.dicom_voi`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import UID

from lunglens.errors import CorruptFile, ScanError, UnsupportedTransferSyntax
from lunglens.io.dicom_common import collect_warnings, frame_value, text
from lunglens.io.raster import colourfulness

#: Retired JPEG processes pydicom has no plugin for but libjpeg (pylibjpeg-libjpeg) decodes:
#: 1.2.840.10008.1.2.4.52-.66 (e.g. .53 spectral selection, .55 full progression, 12-bit).
LIBJPEG_FALLBACK = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in range(52, 67) if n != 57)
#: Pixel Data (7FE0,0010), Float Pixel Data (7FE0,0008), Double Float Pixel Data (7FE0,0009).
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def check_transfer_syntax(ds: Dataset, path: Path) -> UID:
    """Refuse a Transfer Syntax (0002,0010) no installed decoder handles, before decoding."""
    from pydicom.pixels.decoders.base import get_decoder

    meta = getattr(ds, "file_meta", None)
    tsyntax = (
        UID(str(meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")))
        if meta
        else UID("1.2.840.10008.1.2")
    )
    name = tsyntax.name if tsyntax.is_transfer_syntax else "unknown"
    if str(tsyntax) in LIBJPEG_FALLBACK:
        try:
            import libjpeg  # noqa: F401
        except ImportError:
            raise UnsupportedTransferSyntax(
                path,
                f"transfer syntax {tsyntax} ({name}) needs pylibjpeg-libjpeg",
                "Install pylibjpeg-libjpeg.",
            ) from None
        return tsyntax
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise UnsupportedTransferSyntax(
            path,
            f"transfer syntax {tsyntax} ({name}) cannot be decoded",
            "Convert it to an uncompressed or JPEG/JPEG 2000 syntax (e.g. dcmdjpeg, gdcmconv).",
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise UnsupportedTransferSyntax(
            path,
            f"no decoder installed for transfer syntax {tsyntax} ({name})",
            f"Install a plugin: {missing}",
        )
    return tsyntax


def _decode_libjpeg(ds: Dataset, n_frames: int) -> np.ndarray:
    """Decode retired JPEG processes frame by frame with libjpeg (full ISO 10918-1 codec)."""
    import libjpeg
    from pydicom.encaps import generate_frames

    frames = [
        np.asarray(libjpeg.decode(bytes(f)))
        for f in generate_frames(ds.PixelData, number_of_frames=n_frames)
    ]
    arr = np.stack(frames)
    bits = int(ds.get("BitsStored", 16))
    if int(ds.get("PixelRepresentation", 0)) == 1 and bits < 32:  # two's complement at BitsStored
        arr = arr.astype(np.int32)
        arr = np.where(arr >= 2 ** (bits - 1), arr - 2**bits, arr)
    return arr


def modality_values(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    """Apply the modality LUT per frame -> float32 ``[F, H, W]`` (Hounsfield units for CT).

    Enhanced CT keeps RescaleSlope (0028,1053) / RescaleIntercept (0028,1052) in the Pixel
    Value Transformation Sequence (0028,9145) of the per-frame or shared functional groups, so
    each frame gets its own; classic images carry them at the top level.
    """
    if "ModalityLUTSequence" in ds:  # (0028,3000)
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    out = np.empty(pixels.shape, dtype=np.float32)
    for i in range(pixels.shape[0]):
        slope = frame_value(ds, i, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = frame_value(ds, i, "PixelValueTransformationSequence", "RescaleIntercept")
        tmp = Dataset()
        if slope is not None and intercept is not None:
            tmp.RescaleSlope = slope
            tmp.RescaleIntercept = intercept
        out[i] = apply_modality_lut(pixels[i], tmp)
    return out


def to_grey_frames(
    ds: Dataset, arr: np.ndarray, n_frames: int, notes: list[str]
) -> tuple[np.ndarray, float]:
    """Shape any decoded array as ``[F, H, W]``; colour (RGB / YBR / palette) -> BT.601 luma.

    Palette colour (PALETTE COLOR, PS3.3 C.7.6.3.1.5) goes through its lookup tables first
    (``apply_color_lut``). Returns the frames and the colourfulness of the colour pixels (0 for
    grey images), which the chest-image gate uses to refuse colour photographs.
    """
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = text(ds, "PhotometricInterpretation").upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        samples = 3
    colour = 0.0
    if samples == 3:
        if arr.ndim == 3:
            arr = arr[None]
        scale = 255.0 / max(float(arr.max(initial=0)), 255.0)  # 16-bit palettes: 0..65535
        colour = colourfulness(arr[arr.shape[0] // 2, ..., :3].astype(np.float32) * scale)
        notes.append(f"colour image ({photometric}) converted to grey")
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif arr.ndim == 2:
        arr = arr[None]
    if arr.shape[0] != n_frames:
        raise CorruptFile(None, f"decoded {arr.shape[0]} frames, header says {n_frames}")
    return arr, colour


def decode_values(
    ds: Dataset, path: Path, n_frames: int, samples: int, notes: list[str]
) -> tuple[np.ndarray, float]:
    """Decode the pixel data to float32 ``[F, H, W]`` modality values (grey).

    Returns the values and the colourfulness of colour pixels (0 for grey images). Decoder
    warnings become notes; every decoder failure is a typed error naming ``path``.

    Raises
    ------
    UnsupportedTransferSyntax
        No installed decoder handles the Transfer Syntax (0002,0010).
    CorruptFile
        The pixel data is truncated or damaged, or its frames do not match the header.
    """
    tsyntax = check_transfer_syntax(ds, path)
    try:
        with collect_warnings(notes):
            if str(tsyntax) in LIBJPEG_FALLBACK:
                arr = _decode_libjpeg(ds, n_frames)
                notes.append(f"decoded {tsyntax.name} with libjpeg")
            else:
                arr = ds.pixel_array
            frames, colour = to_grey_frames(ds, np.asarray(arr), n_frames, notes)
            values = modality_values(ds, frames) if samples == 1 else frames.astype(np.float32)
    except ScanError as exc:
        raise type(exc)(path, exc.reason, exc.hint) from exc
    except MemoryError as exc:
        raise CorruptFile(path, "not enough memory to decode the pixel data") from exc
    except Exception as exc:  # ValueError (short pixel data), RuntimeError (codec), ...
        raise CorruptFile(
            path,
            f"cannot decode the pixel data ({tsyntax.name}); the file is truncated or damaged "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            "Export or copy the file again.",
        ) from exc
    return values, colour
