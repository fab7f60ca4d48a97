"""SourceKey: the one place path#part strings are built and split; Modality enum."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lunglens.io import SCORED_MODALITIES, Modality, Scan, SourceKey


def test_key_round_trip_for_series_and_frames(tmp_path: Path) -> None:
    key = SourceKey(str(tmp_path / "series"), "1.2.840.1")
    assert str(key) == f"{tmp_path / 'series'}#1.2.840.1"
    assert SourceKey.parse(str(key)) == key
    assert SourceKey.parse(str(key)).series_uid == "1.2.840.1"
    assert SourceKey.parse(f"{tmp_path / 'multi.dcm'}#3").part == "3"


def test_existing_file_with_hash_in_its_name_is_not_split(tmp_path: Path) -> None:
    odd = tmp_path / "scan#2.png"
    odd.write_bytes(b"x")
    key = SourceKey.parse(odd)
    assert key == SourceKey(str(odd)) and key.part is None
    assert key.name == "scan#2.png"


def test_placeholder_part_is_no_series_uid() -> None:
    assert SourceKey("/no/such/folder", "(no uid)").series_uid is None
    assert SourceKey.parse("/no/such/file.dcm").part is None


def test_modality_is_a_plain_string_everywhere() -> None:
    scan = Scan(source="x", image=np.zeros((4, 4), np.float32), modality="ct")
    assert scan.modality is Modality.CT and scan.modality == "ct"
    assert json.dumps({"m": scan.modality}) == '{"m": "ct"}' and f"{scan.modality}" == "ct"
    assert Modality.CT.scored and not Modality.UNKNOWN.scored
    assert SCORED_MODALITIES == ("ct", "cxr")
    with pytest.raises(ValueError, match="unknown modality"):
        Scan(source="x", image=np.zeros((4, 4), np.float32), modality="mr")
