"""The CAM overlay of the viewer: its settings, its bounded cache and the heat-map job.

A raw CAM (``[C, h, w]``, one map per class) comes from the classification for the
representative slice and from the model for any other slice; a *heat map* is one class of it
resized to the slice and colored (RGBA, transparent low end) by :func:`lunglens.explain.colorize`.
:func:`compute_heat` does both for one slice, in the GUI's worker pool; :class:`CamCache` keeps
the results so scrolling back to a slice or switching class does not compute again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lunglens.explain import cam_map, colorize, raw_cam
from lunglens.inference import get_engine
from lunglens.models import ModelInfo

#: Most raw CAMs kept per scan. A raw CAM is small next to the slice but not negligible (the
#: shipped CT model's is 2 x 256 x 256 float32, 0.5 MB), and a CT series can have several hundred
#: slices: 64 maps (about 32 MB) cover scrolling back and forth over a region of interest without
#: recomputing, while scrolling a whole series end to end keeps memory flat. The representative
#: slice's map (from the classification itself) is never evicted.
CAM_CACHE_SLICES = 64


@dataclass
class CamSettings:
    """How the CAM overlay is shown; the window's controls write these fields.

    Attributes
    ----------
    visible
        The overlay is drawn over the slice.
    opacity
        Overlay opacity in [0, 1] (the view paints it as the layer's opacity: no recoloring).
    colormap
        A name of :data:`lunglens.explain.COLORMAPS`.
    cam_class
        The class whose evidence is shown; ``""`` means the result's own ``cam_class``.
    """

    visible: bool = False
    opacity: float = 0.4
    colormap: str = "jet"
    cam_class: str = ""


@dataclass(frozen=True)
class HeatRequest:
    """Everything :func:`compute_heat` needs, copied out of the viewer state.

    A request holds no reference to the state, so the worker reads nothing the GUI thread may
    change while it runs.

    Attributes
    ----------
    scan_id
        The scan the request is for (a result for a scan closed meanwhile is dropped).
    index
        Slice index.
    image
        The ``[H, W]`` slice in [0, 1]: the model input when ``raw`` is missing, and the size
        the heat maps are resized to.
    raw
        The slice's raw ``[C, h, w]`` CAM when already known, else ``None`` (the model computes
        it).
    info
        The model of the result (its engine computes a missing raw CAM).
    classes
        Class name -> index into the raw CAM: every class of the model, so switching class is a
        cache hit instead of another round trip through the worker pool.
    colormap
        Colormap of the heat maps.
    floors
        Class name -> the least peak its map is scaled to (a scan that is not flagged:
        :func:`lunglens.explain.display_floor`); classes not named are scaled to their own
        maximum.
    """

    scan_id: int
    index: int
    image: np.ndarray
    raw: np.ndarray | None
    info: ModelInfo
    classes: tuple[tuple[str, int], ...]
    colormap: str
    floors: tuple[tuple[str, float], ...] = ()

    @property
    def key(self) -> tuple[int, int, str, str]:
        """``(scan_id, index, colormap, model hash)``: two requests with one key compute the
        same maps. The model is part of it: a scan classified again with another model while
        a job of the first was running must not have its request taken for the running one
        (whose maps are then dropped as another model's)."""
        return (self.scan_id, self.index, self.colormap, self.info.sha256)


@dataclass(frozen=True)
class SliceHeat:
    """What :func:`compute_heat` returns: the raw CAM of a slice and its heat map per class.

    ``model_sha256`` names the model that computed the raw CAM, so maps of a model the user
    has switched away from (a re-classification of the same scan) are not kept.
    """

    scan_id: int
    index: int
    colormap: str
    model_sha256: str
    raw: np.ndarray
    heats: dict[str, np.ndarray]


def compute_heat(request: HeatRequest) -> SliceHeat:
    """Worker body: the raw CAM of one slice (model call only when unknown) and the colored
    heat map of every class.

    Parameters
    ----------
    request
        A :class:`HeatRequest` from :meth:`lunglens.viewer.ViewerState.heat_request`.

    Returns
    -------
    SliceHeat
        RGBA uint8 heat maps ``[H, W, 4]`` of the slice's size, keyed by class name.
    """
    raw = request.raw
    if raw is None:
        raw = raw_cam(get_engine(request.info), request.image)
    shape = request.image.shape
    floors = dict(request.floors)
    heats = {
        name: colorize(cam_map(raw, index, shape, floors.get(name)), request.colormap)
        for name, index in request.classes
    }
    return SliceHeat(
        request.scan_id, request.index, request.colormap, request.info.sha256, raw, heats
    )


class CamCache:
    """Raw CAMs of up to ``max_slices`` slices and the heat maps of one slice.

    Heat maps are full-size RGBA images (about 1 MB for a 512 x 512 CT slice, 14 MB for a
    large radiograph), so only the slice on screen keeps them, for every class and colormap
    computed so far.

    Parameters
    ----------
    max_slices
        Bound on the raw CAMs kept (default :data:`CAM_CACHE_SLICES`).
    """

    def __init__(self, max_slices: int = CAM_CACHE_SLICES) -> None:
        self.max_slices = max_slices
        #: Slice index -> raw ``[C, h, w]`` CAM, oldest first.
        self.raw: dict[int, np.ndarray] = {}
        #: ``(slice, class, colormap)`` -> RGBA heat map, for one slice only.
        self.heats: dict[tuple[int, str, str], np.ndarray] = {}
        #: Slice whose raw CAM is never evicted (the result's representative slice).
        self.keep: int | None = None

    def clear(self, keep: int | None = None) -> None:
        """Forget every map (another scan or result); ``keep`` is the new slice to protect."""
        self.raw.clear()
        self.heats.clear()
        self.keep = keep

    def put_raw(self, index: int, cam: np.ndarray) -> None:
        """Store a raw CAM, evicting the oldest ones beyond :attr:`max_slices`."""
        self.raw[index] = cam
        if len(self.raw) > self.max_slices:
            for old in list(self.raw)[: -self.max_slices]:
                if old != self.keep:
                    self.raw.pop(old, None)

    def put_heats(self, index: int, colormap: str, heats: dict[str, np.ndarray]) -> None:
        """Store the heat maps of slice ``index``; those of any other slice are dropped."""
        self.heats = {k: v for k, v in self.heats.items() if k[0] == index}
        for name, heat in heats.items():
            self.heats[(index, name, colormap)] = heat

    def heat(self, index: int, cam_class: str, colormap: str) -> np.ndarray | None:
        """The cached heat map, or ``None``."""
        return self.heats.get((index, cam_class, colormap))
