"""Shipped models: where they are, what they are, and whether they can be trusted."""

from lunglens.models.location import models_dir, resources_dir
from lunglens.models.registry import (
    GalleryLayer,
    ModelInfo,
    default_model_for,
    discover_models,
    get_model,
    list_models,
    load_manifest,
    modality_checker,
    sha256_of,
    verify_model,
)

__all__ = [
    "GalleryLayer",
    "ModelInfo",
    "default_model_for",
    "discover_models",
    "get_model",
    "list_models",
    "load_manifest",
    "modality_checker",
    "models_dir",
    "resources_dir",
    "sha256_of",
    "verify_model",
]
