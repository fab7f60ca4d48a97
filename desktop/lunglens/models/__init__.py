"""Shipped models: where they are, what they are, and whether they can be trusted."""

from lunglens.models.hashing import sha256_bytes, sha256_of
from lunglens.models.location import models_dir, resources_dir
from lunglens.models.manifest import GalleryLayer, ModelManifest
from lunglens.models.registry import (
    ModelInfo,
    default_model_for,
    discover_models,
    get_model,
    list_models,
    load_manifest,
    modality_checker,
    verify_model,
)

__all__ = [
    "GalleryLayer",
    "ModelInfo",
    "ModelManifest",
    "default_model_for",
    "discover_models",
    "get_model",
    "list_models",
    "load_manifest",
    "modality_checker",
    "models_dir",
    "resources_dir",
    "sha256_bytes",
    "sha256_of",
    "verify_model",
]
