"""The words an exported class activation map carries with it.

A CAM saved as a PNG leaves the app: it is mailed, pasted into a report, opened next to other
images. Bare, a heat map over a slice reads as a finding ("the lesion is here") and says
nothing of the model behind it. So every exported map gets a footer burned into the pixels
(it survives a screenshot or a re-save) and the same words as PNG text chunks (readable by
software): the triage disclaimer, the decision it belongs to, what the map is and is not, and
the model's name, version and SHA-256 prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from lunglens import DISCLAIMER, __version__
from lunglens.inference.result import ScanResult

#: What the map shows, in the words the app's CAM panel uses.
CAM_WORDS = "where the model looked, not a lesion outline"
#: Hash characters shown in the footer (the PNG text chunk carries all of them).
HASH_SHOWN = 12
#: Footer font size as a share of the image width, and its bounds in pixels.
FONT_SHARE, FONT_MIN, FONT_MAX = 1 / 45, 11, 28


def caption_lines(result: ScanResult, cam_class: str, slice_index: int) -> list[str]:
    """The footer's lines for the map of ``cam_class`` on slice ``slice_index`` (0-based)."""
    where = f" of slice {slice_index + 1}" if result.n_slices > 1 else ""
    return [
        DISCLAIMER,
        result.headline,
        f"CAM of '{cam_class}'{where}: {CAM_WORDS}.",
        f"Model {result.model} v{result.model_version}, SHA-256 {result.model_sha256[:HASH_SHOWN]}",
    ]


def png_text(result: ScanResult, lines: Sequence[str]) -> dict[str, str]:
    """PNG text chunks (keywords of the PNG specification where one fits) for the export."""
    return {
        "Software": f"LungLens {__version__}",
        "Description": "\n".join(lines),
        "Disclaimer": DISCLAIMER,
        "Model": f"{result.model} {result.model_version}",
        "Model SHA-256": result.model_sha256,
    }


def _wrap(text: str, length: Callable[[str], float], room: float) -> list[str]:
    """Words of ``text`` in lines at most ``room`` pixels long (``length`` measures a line); a
    word longer than a line (a hash on a narrow image) is cut into pieces that fit."""
    lines: list[str] = []
    for word in text.split():
        pieces = []
        while length(word) > room and len(word) > 1:
            cut = max(1, int(len(word) * room / length(word)))
            pieces.append(word[:cut])
            word = word[cut:]
        for piece in [*pieces, word]:
            if lines and length(f"{lines[-1]} {piece}") <= room:
                lines[-1] = f"{lines[-1]} {piece}"
            else:
                lines.append(piece)
    return lines or [""]


def with_footer(rgb: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """``rgb`` (uint8 ``[H, W, 3]``) with a white footer below it holding ``lines``, wrapped
    to the image's width; the image's own pixels are left as they are."""
    from PIL import Image, ImageDraw, ImageFont

    w = rgb.shape[1]
    size = int(np.clip(round(w * FONT_SHARE), FONT_MIN, FONT_MAX))
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow without FreeType: its fixed bitmap font
        font = ImageFont.load_default()
    if not isinstance(font, ImageFont.FreeTypeFont):  # the bitmap font draws Latin-1 only
        lines = [line.encode("latin-1", "replace").decode("latin-1") for line in lines]
    room = w - 2 * size
    wrapped = [part for line in lines for part in _wrap(line, lambda t: font.getlength(t), room)]
    line_h = int(size * 1.35)
    footer = Image.new("RGB", (w, line_h * len(wrapped) + size), "white")
    draw = ImageDraw.Draw(footer)
    for i, text in enumerate(wrapped):
        draw.text((size, size // 2 + i * line_h), text, fill=(20, 20, 20), font=font)
    if rgb.ndim == 2:  # a grey image gets the footer too
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return np.vstack([np.ascontiguousarray(rgb[..., :3]).astype(np.uint8), np.asarray(footer)])
