"""Data sets from a LungLens manifest CSV, prepared with the app's own preprocessing.

Images are decoded and resized once, with :func:`lunglens.preprocess.to_model_input` (the same
function the app calls), and kept in memory as uint8: the CT set is 4,597 images, 75 MB at
128 x 128, so every epoch is pure compute, which is what a 2-core machine needs.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lunglens.preprocess import (
    CROPS,
    IDENTITY,
    Preprocessing,
    lung_field,
    model_input_with_boxes,
    resize,
)


@dataclass
class Record:
    path: Path
    label: str
    source: str
    group: str
    fold: int


def read_manifest(manifest: Path) -> list[Record]:
    """Rows of ``manifest.csv`` (``path,label,source,group,fold,...``), paths made absolute."""
    root = manifest.parent
    with open(manifest, newline="") as fh:
        return [
            Record(root / r["path"], r["label"], r["source"], r["group"], int(r["fold"]))
            for r in csv.DictReader(fh)
        ]


def load_unit_image(path: Path) -> np.ndarray:
    """Decode one training image to float32 [H, W] in [0, 1] with the app's scan loader."""
    from lunglens.io import load_scan

    return load_scan(path).image[0]


@dataclass
class ImageSet:
    """Preloaded images (uint8 ``[N, H, W]``), integer labels and per-image facts."""

    images: np.ndarray
    labels: np.ndarray
    records: list[Record]
    classes: list[str]

    def subset(self, idx: np.ndarray) -> ImageSet:
        return ImageSet(
            self.images[idx], self.labels[idx], [self.records[i] for i in idx], self.classes
        )

    def folds(self, folds: Sequence[int]) -> np.ndarray:
        wanted = set(folds)
        return np.array([i for i, r in enumerate(self.records) if r.fold in wanted], dtype=int)

    @property
    def sources(self) -> np.ndarray:
        return np.array([r.source for r in self.records])

    @property
    def groups(self) -> np.ndarray:
        return np.array([r.group for r in self.records])


def save_image_cache(
    path: Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str] | np.ndarray,
    keep: np.ndarray,
    **extra: str,
) -> None:
    """Write the training pipeline's image cache: uint8 images, integer labels, class names
    and ``keep`` (each image's row in the data set's ``manifest.csv``), plus ``extra`` keys
    (a transported copy's provenance, :mod:`lunglens.training.transport`)."""
    arrays: dict[str, Any] = dict(
        images=images, labels=labels, classes=np.array(classes), keep=keep
    )
    arrays.update({k: np.array(v) for k, v in extra.items()})
    np.savez(path, **arrays)


def load_imageset(
    manifest: Path,
    size: int,
    classes: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    workers: int = 2,
    prep: Preprocessing = IDENTITY,
) -> ImageSet:
    """Decode every image in ``manifest`` at ``size x size``.

    ``limit`` keeps a class-balanced random subset (for smoke tests).
    """
    records = read_manifest(manifest)
    classes = list(classes) if classes else sorted({r.label for r in records})
    if limit is not None and limit < len(records):
        rng = np.random.default_rng(seed)
        per = max(1, limit // len(classes))
        keep: list[Record] = []
        for c in classes:
            rows = [r for r in records if r.label == c]
            keep += [rows[i] for i in rng.permutation(len(rows))[:per]]
        records = keep

    return load_records(records, size, classes, workers, prep)


def load_records(
    records: Sequence[Record],
    size: int,
    classes: Sequence[str],
    workers: int = 2,
    prep: Preprocessing = IDENTITY,
) -> ImageSet:
    """Decode ``records`` at ``size x size`` (uint8) with the app's loader and preprocessing."""

    def one(rec: Record) -> np.ndarray:
        im = model_input_with_boxes(load_unit_image(rec.path), (size, size), prep)[0][0, 0]
        return np.round(im * 255.0).astype(np.uint8)

    with ThreadPoolExecutor(workers) as pool:
        images = np.stack(list(pool.map(one, records)))
    labels = np.array([list(classes).index(r.label) for r in records], dtype=np.int64)
    return ImageSet(images, labels, list(records), [str(c) for c in classes])


def load_lung_fields(
    records: Sequence[Record],
    size: int,
    workers: int = 2,
    prep: Preprocessing = IDENTITY,
    field_of: Callable[[np.ndarray], np.ndarray] = lung_field,
) -> np.ndarray:
    """Lung fields of ``records`` framed like :func:`load_records` frames the images.

    ``field_of`` (:func:`lunglens.preprocess.lung_field` for CT slices,
    :func:`lunglens.xray_lungs.xray_lung_field` for X-rays) runs on the whole decoded image (it
    needs the air around the body to tell the lungs from it), then the mask is cut to the
    image's crop box and resized to ``size x size``. uint8 ``[N, size, size]``, 255 inside.
    """

    def one(rec: Record) -> np.ndarray:
        image = load_unit_image(rec.path)
        top, bottom, left, right = CROPS[prep.crop](image)
        field = field_of(image)[top:bottom, left:right].astype(np.float32)
        return np.round(resize(field, (size, size)) * 255.0).astype(np.uint8)

    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(one, records)))
