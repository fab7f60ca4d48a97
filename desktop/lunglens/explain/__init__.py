"""Explanations: class activation maps, overlays, and the activation gallery."""

from lunglens.explain.cam import FLOOR_NOTE, cam_map, display_floor, result_floor
from lunglens.explain.caption import caption_lines, png_text, with_footer
from lunglens.explain.gallery import ChannelMap, activation_maps, layer_description, tile
from lunglens.explain.methods import CAM_METHODS, raw_cam
from lunglens.explain.overlay import COLORMAPS, cam_alpha, colorize, overlay, save_png

__all__ = [
    "CAM_METHODS",
    "COLORMAPS",
    "FLOOR_NOTE",
    "ChannelMap",
    "activation_maps",
    "cam_alpha",
    "cam_map",
    "caption_lines",
    "colorize",
    "display_floor",
    "layer_description",
    "overlay",
    "png_text",
    "raw_cam",
    "result_floor",
    "save_png",
    "tile",
    "with_footer",
]
