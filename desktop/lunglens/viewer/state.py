"""What the viewer shows, as plain data: :class:`ViewerState`.

The main window (:mod:`lunglens.gui.main_window`) binds its widgets to one
:class:`ViewerState`: user actions call its methods, and the window copies the values and texts
it returns into widgets. The state never computes a heat map itself: it hands out a
:class:`~lunglens.viewer.cam.HeatRequest` for the GUI's worker pool and stores the
:class:`~lunglens.viewer.cam.SliceHeat` that comes back. Re-windowing the displayed slice is one
vectorized lookup on a slice the user is looking at, so it stays synchronous (the slider shows
exactly the slice it points at, with no frame of lag).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lunglens.explain import (
    FLOOR_NOTE,
    cam_map,
    caption_lines,
    overlay,
    png_text,
    result_floor,
    save_png,
    with_footer,
)
from lunglens.explain.overlay import to_uint8
from lunglens.inference import GateVerdict, ScanResult, label_index
from lunglens.io import Modality, Scan, SourceKey
from lunglens.io.dicom_file import percentile_window
from lunglens.models import ModelInfo
from lunglens.preprocess import WINDOW_PRESETS, Window
from lunglens.viewer.cam import CamCache, CamSettings, HeatRequest, SliceHeat

#: Ids of opened scans, unique per process: a job carries the id of the scan it was started for,
#: and its result is dropped when another scan was opened meanwhile.
_scan_ids = itertools.count(1)

#: Why a window cannot be applied (shown in the status bar).
NO_MODALITY_VALUES = "Window/level needs modality values (DICOM); plain images have none."
PRESETS_CT_ONLY = "Window presets are in Hounsfield units (CT only)."


class ViewerState:
    """The open scan, its result, the slice on screen, the display window and the CAM overlay.

    Attributes
    ----------
    scan
        The open :class:`~lunglens.io.Scan` (``None`` before the first one).
    gate
        The chest-image gate's verdict on it (``None``: not run; the core still refuses).
    scan_id
        Id of the open scan (see :meth:`open`).
    slice_index
        The slice on screen (0 for a single image).
    display_window
        The CT window applied to the modality values, or ``None`` (the pixels as loaded, e.g.
        after a VOI LUT or for a plain image).
    result, result_info
        The classification of the open scan and the model that made it.
    auto_model
        The default model of the open scan's modality (automatic model choice), if any.
    unrouted
        Why automatic model choice chose none for the open plain image (the modality check
        and the chest-image gate disagree), or ``None``.
    refusal
        Why the core refused to score the open scan with the model chosen last (e.g. a model of
        the other modality), or ``None``; see :meth:`unscored_reason`.
    cam
        How the CAM overlay is shown (:class:`~lunglens.viewer.cam.CamSettings`).
    cams
        Raw CAMs and heat maps computed so far (:class:`~lunglens.viewer.cam.CamCache`).
    """

    def __init__(self, cam: CamSettings | None = None) -> None:
        self.scan: Scan | None = None
        self.gate: GateVerdict | None = None
        self.scan_id = 0
        self.slice_index = 0
        self.display_window: Window | None = None
        self.result: ScanResult | None = None
        self.result_info: ModelInfo | None = None
        self.auto_model: ModelInfo | None = None
        self.unrouted: str | None = None
        self.refusal: str | None = None
        self.cam = cam or CamSettings()
        self.cams = CamCache()

    # scan ---------------------------------------------------------------------------------
    def open(self, scan: Scan, gate: GateVerdict | None = None) -> int:
        """Make ``scan`` the open scan: first slice, its own window, no result, no CAM.

        Returns
        -------
        int
            The new :attr:`scan_id`.
        """
        self.scan = scan
        self.gate = gate
        self.scan_id = next(_scan_ids)
        self.slice_index = 0
        self.display_window = scan.window if scan.raw is not None else None
        self.auto_model = None
        self.unrouted = None
        self.refusal = None
        self.clear_result()
        return self.scan_id

    def unscored_reason(self, automatic: bool = True) -> str | None:
        """Why no model output may be shown for the open scan: the gate refused it, the core
        refused the chosen model, or (``automatic`` model choice only: a model picked by hand
        scores such an image) automatic mode chose none; ``None`` when one may, and always
        once the scan has a result. A refused scan gets no score, and no activation maps
        either: a model's view of a scan it must not judge would undercut the refusal."""
        if self.gate is not None and not self.gate.accepted:
            if self.gate.rule == "inverted":  # a chest image the wrong way round
                return self.gate.reason
            return f"not a chest scan ({self.gate.reason})"
        if self.result is not None:
            return None
        return self.refusal or (self.unrouted if automatic else None)

    @property
    def n_slices(self) -> int:
        """Slices of the open scan (0 when none is open)."""
        return self.scan.n_slices if self.scan is not None else 0

    def clamp_slice(self, index: int) -> int:
        """``index`` moved into the open scan's slice range."""
        return int(min(max(index, 0), max(self.n_slices - 1, 0)))

    def windowable(self) -> bool:
        """True when CT window presets apply (modality values in Hounsfield units)."""
        return (
            self.scan is not None
            and self.scan.raw is not None
            and self.scan.modality == Modality.CT
        )

    # display ------------------------------------------------------------------------------
    def display_image(self, index: int | None = None) -> np.ndarray:
        """Float [0, 1] slice as displayed: re-windowed by the core when W/L was changed."""
        if self.scan is None:
            raise RuntimeError("no scan is open")
        i = self.slice_index if index is None else index
        w = self.display_window
        if w is not None and self.scan.raw is not None and w != self.scan.window:
            return w.apply(self.scan.raw[i], invert=self.scan.inverted)
        return self.scan.image[i]

    def display_pixels(self) -> np.ndarray:
        """The slice on screen as uint8, what the image view paints."""
        return to_uint8(self.display_image())

    def slice_text(self) -> str:
        """``Slice i/n · z mm`` for a series (position from ImagePositionPatient), else ``""``;
        ``· not scored`` on a slice left out of the series' score."""
        scan = self.scan
        if scan is None or scan.n_slices <= 1:
            return ""
        text = f"Slice {self.slice_index + 1}/{scan.n_slices}"
        if scan.slice_positions is not None and self.slice_index < len(scan.slice_positions):
            text += f" · {scan.slice_positions[self.slice_index]:.1f} mm"
        if self.slice_unscored():
            text += " · not scored"
        return text

    def window_text(self) -> str:
        """``W width  L level`` of the display window, or ``""``."""
        w = self.display_window
        return f"W {w.width:.0f}  L {w.center:.0f}" if w is not None else ""

    def pixel_text(self, x: int, y: int) -> str:
        """The pixel under the cursor: HU for CT, the modality value for other DICOM, the
        display gray for plain images; ``""`` outside the image (``x < 0``)."""
        scan = self.scan
        if scan is None or x < 0:
            return ""
        i = self.slice_index
        if scan.raw is not None:
            unit = "HU" if scan.modality == Modality.CT else "value"
            return f"({x}, {y})  {unit} {float(scan.raw[i, y, x]):.0f}"
        return f"({x}, {y})  gray {float(scan.image[i, y, x]):.3f}"

    def window_refusal(self, window: Window | str | None) -> str | None:
        """Why :meth:`set_window` cannot apply ``window`` to the open scan, or ``None``."""
        if self.scan is None or self.scan.raw is None:
            return NO_MODALITY_VALUES
        if isinstance(window, str) and self.scan.modality != Modality.CT:
            return PRESETS_CT_ONLY
        return None

    def set_window(self, window: Window | str | None) -> Window | None:
        """Apply a CT preset name, a :class:`~lunglens.preprocess.Window`, or ``None`` (the
        scan's own window); check :meth:`window_refusal` first.

        Returns
        -------
        Window or None
            The new display window.
        """
        if self.scan is None:
            raise RuntimeError("no scan is open")
        if isinstance(window, str):
            window = WINDOW_PRESETS[window]
        self.display_window = window if window is not None else self.scan.window
        return self.display_window

    def drag_window(self, dx: int, dy: int) -> Window | None:
        """Right-drag by ``(dx, dy)`` screen pixels: horizontal changes the width, vertical the
        level, in steps of 1/256 of the width (as most viewers). ``None`` without modality
        values."""
        if self.scan is None or self.scan.raw is None:
            return None
        w = self.display_window
        if w is None:  # a VOI LUT was applied at load: start from the slice's own range
            w = percentile_window(self.scan.raw[self.slice_index])
        step = max(1.0, w.width / 256.0)
        self.display_window = Window(w.center + dy * step, max(1.0, w.width + dx * step), "custom")
        return self.display_window

    # result and CAM -----------------------------------------------------------------------
    def clear_result(self) -> None:
        """No result and no CAM: a scan was opened, or its classification was refused (a
        previous model's result must not stay on screen under a "Not scored" banner)."""
        self.result = None
        self.result_info = None
        self.cams.clear()

    def set_result(self, result: ScanResult, info: ModelInfo) -> None:
        """Store the classification of the open scan; its CAM seeds the cache and its class
        becomes the one shown."""
        self.result = result
        self.result_info = info
        self.refusal = None
        self.cams.clear(keep=result.representative_slice)
        if result.cam is not None:
            self.cams.put_raw(result.representative_slice, result.cam)
        self.cam.cam_class = result.cam_class

    def heat_class(self) -> str:
        """The class whose evidence is shown (the chosen one, else the result's)."""
        if self.result is None:
            return self.cam.cam_class
        return self.cam.cam_class or self.result.cam_class

    def current_heat(self) -> np.ndarray | None:
        """Cached RGBA heat map of the slice on screen for the shown class and colormap, or
        ``None`` while it is not computed (see :meth:`heat_request`)."""
        if self.scan is None or self.result is None:
            return None
        return self.cams.heat(self.slice_index, self.heat_class(), self.cam.colormap)

    def slice_unscored(self) -> bool:
        """Whether the slice on screen was left out of the series' score
        (:mod:`lunglens.inference.slice_filter`)."""
        return self.result is not None and self.slice_index in self.result.unscored_slices

    def unscored_slice_reason(self) -> str | None:
        """Why the slice on screen gets no activation maps (the gallery's words), ``None`` on a
        scored slice: it was left out of the series' score, so no model output is shown for
        it."""
        if not self.slice_unscored():
            return None
        return f"slice {self.slice_index + 1} was not scored (not like a chest CT slice)"

    def unscored_note(self) -> str:
        """What the CAM panel says on a slice of the series left out of its score (the CT
        model does not see chest CT in it: :mod:`lunglens.inference.slice_filter`), where it
        shows no map; "" on a scored slice."""
        if not self.slice_unscored():
            return ""
        return (
            f"Slice {self.slice_index + 1} was not scored: it does not look like a chest CT "
            "slice to the CT model. No CAM."
        )

    def heat_request(self) -> HeatRequest | None:
        """What to compute for the slice on screen, or ``None`` (cached, no result, or a slice
        left out of the score)."""
        scan, info = self.scan, self.result_info
        if scan is None or self.result is None or info is None or self.current_heat() is not None:
            return None
        if self.unscored_note():
            return None
        i = self.slice_index
        return HeatRequest(
            scan_id=self.scan_id,
            index=i,
            image=scan.image[i],
            raw=self.cams.raw.get(i),
            info=info,
            classes=tuple((name, label_index(info, name)) for name in self.result.labels),
            colormap=self.cam.colormap,
            floors=tuple(
                (name, floor)
                for name in self.result.labels
                if (floor := self.cam_floor(name)) is not None
            ),
        )

    def cam_scale_note(self) -> str:
        """What the CAM panel says about the scale of the map on screen ("" for the usual
        scale, the map's own maximum)."""
        if self.result is None or self.cam_floor(self.heat_class()) is None:
            return ""
        return FLOOR_NOTE

    def cam_floor(self, label: str) -> float | None:
        """The least peak the map of ``label`` on the slice on screen is scaled to
        (:func:`lunglens.explain.display_floor`: the model's reference when that slice alone
        is not flagged)."""
        if self.result is None:
            return None
        return result_floor(self.result, label, self.slice_index)

    def store_heat(self, heat: SliceHeat) -> bool:
        """Keep what a heat job computed; ``False`` (nothing kept) when it is for a scan closed
        meanwhile or a model no longer shown. Heat maps are kept only for the slice on screen."""
        info = self.result_info
        if heat.scan_id != self.scan_id or info is None or heat.model_sha256 != info.sha256:
            return False
        self.cams.put_raw(heat.index, heat.raw)
        if heat.index == self.slice_index:
            self.cams.put_heats(heat.index, heat.colormap, heat.heats)
        return True

    def output_name(self, suffix: str) -> str:
        """File name for something saved from the result: the scan's file or folder name
        without its extension, plus ``suffix`` (``_cam.png``, ``_lunglens.pdf``)."""
        source = self.result.source if self.result is not None else ""
        source = source or (self.scan.source if self.scan is not None else "scan")
        return f"{Path(SourceKey.parse(source).path).stem}{suffix}"

    def overlay_export(self) -> OverlayExport:
        """A snapshot of the displayed slice and its CAM for the PNG export (the file is
        written from it, in a worker or not, while the user goes on scrolling)."""
        if self.scan is None or self.result is None:
            raise RuntimeError("classify a scan before exporting its CAM")
        if note := self.unscored_note():
            raise RuntimeError(note)
        raw = self.cams.raw.get(self.slice_index)
        if raw is None:
            raise RuntimeError("the CAM of this slice is still being computed")
        cls = self.heat_class()
        info = self.result_info
        idx = label_index(info, cls) if info is not None else self.result.labels.index(cls)
        lines = caption_lines(self.result, cls, self.slice_index)
        return OverlayExport(
            self.display_image(),
            raw,
            idx,
            self.cam.opacity,
            self.cam.colormap,
            self.cam_floor(cls),
            tuple(lines),
            tuple(png_text(self.result, lines).items()),
        )


@dataclass(frozen=True)
class OverlayExport:
    """One slice as displayed and its raw CAM: what the CAM PNG export writes.

    Attributes
    ----------
    image
        ``[H, W]`` float slice in [0, 1], windowed as on screen.
    raw
        Raw ``[C, h, w]`` CAM of the slice.
    class_index
        Class of ``raw`` blended over the slice.
    opacity, colormap
        As on screen.
    floor
        The map's least scale peak, as on screen (:func:`lunglens.explain.display_floor`).
    caption, text
        The footer's lines burned under the image and the PNG's text chunks
        (:mod:`lunglens.explain.caption`): an exported map says what it is and whose it is.
    """

    image: np.ndarray
    raw: np.ndarray
    class_index: int
    opacity: float
    colormap: str
    floor: float | None = None
    caption: tuple[str, ...] = ()
    text: tuple[tuple[str, str], ...] = ()

    def rgb(self) -> np.ndarray:
        """uint8 RGB ``[H, W, 3]``: the slice in gray with the class's heat blended on top."""
        heat = cam_map(self.raw, self.class_index, self.image.shape, self.floor)
        return overlay(self.image, heat, alpha=self.opacity, colormap=self.colormap)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`rgb` as a PNG at ``path``, its caption under it and in its text."""
        rgb = self.rgb()
        save_png(with_footer(rgb, self.caption) if self.caption else rgb, path, dict(self.text))
        return Path(path)
