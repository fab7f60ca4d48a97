"""Attribute access every DICOM module shares: text values, functional groups, warnings.

Enhanced (multi-frame) objects keep per-frame attributes in functional group macros
(PS3.3 C.7.6.16): the Per-frame Functional Groups Sequence (5200,9230) first, then the Shared
Functional Groups Sequence (5200,9229); classic images carry the same keywords at the top
level. :func:`frame_value` looks in that order, so callers need not care which kind they hold.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydicom.dataset import Dataset


def text(ds: Dataset, keyword: str) -> str:
    """The element's value as stripped text; ``""`` when absent."""
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def frame_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """Item of a functional group macro for one frame: per-frame first, then shared."""
    for groups, index in (
        (ds.get("PerFrameFunctionalGroupsSequence"), frame),
        (ds.get("SharedFunctionalGroupsSequence"), 0),
    ):
        if groups and index < len(groups):
            seq = groups[index].get(sequence)
            if seq:
                item: Dataset = seq[0]
                return item
    return None


def frame_value(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """``keyword`` of one frame: from its functional group ``sequence``, else the top level."""
    item = frame_item(ds, frame, sequence)
    if item is not None and keyword in item:
        return item.get(keyword)
    return ds.get(keyword)


@contextmanager
def collect_warnings(notes: list[str]) -> Iterator[None]:
    """Turn pydicom/decoder warnings into (at most three) notes instead of console noise."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen: list[str] = []
    for w in caught:
        msg = str(w.message).splitlines()[0][:200]
        if msg not in seen and not issubclass(w.category, (DeprecationWarning, ResourceWarning)):
            seen.append(msg)
    notes.extend(f"warning while reading: {m}" for m in seen[:3])
