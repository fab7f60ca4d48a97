"""The gate's parts without the shipped model: header and pixel rules on hand-built scans, the
statistics' defaults and their file format."""

from __future__ import annotations

import io

import numpy as np
import pytest

from lunglens.inference import gate, gate_rules
from lunglens.inference.gate_rules import (
    RULES,
    Rule,
    body_part_rule,
    localizer_rule,
    modality_rule,
    neighbour_correlation,
    noise_rule,
    register_rule,
)
from lunglens.inference.gate_stats import fit_stats
from lunglens.io import SCORED_MODALITIES, Scan


def _scan(image: np.ndarray | None = None, /, **metadata: str) -> Scan:
    if image is None:
        image = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    return Scan("s.dcm", image, metadata=metadata)


def test_header_rules_read_the_metadata_the_readers_record() -> None:
    assert modality_rule(_scan(dicom_modality="mr")) == "modality MR (magnetic resonance)"
    assert modality_rule(_scan(dicom_modality="CT")) is None
    assert body_part_rule(_scan(body_part="Lower_Leg")) == "body part LOWER_LEG"
    assert body_part_rule(_scan(body_part="CHEST_ABDOMEN")) is None  # names the chest too
    assert body_part_rule(_scan(body_part="TRUNK")) is None  # unknown words go to the pixels
    scout = {"image_type": "ORIGINAL\\PRIMARY\\LOCALIZER"}
    assert localizer_rule(_scan(dicom_modality="CT", **scout)) is not None
    assert localizer_rule(_scan(dicom_modality="CR", **scout)) is None  # CT scouts only


def test_noise_rule_uses_neighbour_correlation() -> None:
    smooth = _scan()
    assert neighbour_correlation(smooth.image[0].astype(np.float64)) > 0.9
    assert noise_rule(smooth) is None
    noise = np.random.default_rng(0).random((128, 128), dtype=np.float32)
    assert (noise_rule(_scan(noise)) or "").startswith("the image is noise")


def test_registered_rule_runs_in_the_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate_rules, "RULES", list(RULES))  # the test's rule stays in the test
    register_rule(Rule("test", lambda scan: "test refusal"), first=True)
    assert gate_rules.RULES[0].name == "test"
    monkeypatch.setattr(gate, "RULES", gate_rules.RULES)
    verdict = gate.check_chest(_scan())
    assert not verdict.accepted and verdict.rule == "test" and verdict.reason == "test refusal"


def test_statistics_default_to_the_scored_modalities_and_store_plain_labels() -> None:
    rng = np.random.default_rng(0)
    desc = np.concatenate([rng.normal(0, 1, (300, 3)), rng.normal(5, 1, (300, 3))])
    modality = np.array(["ct"] * 300 + ["cxr"] * 300)
    stats, _ = fit_stats(desc, modality, rng.integers(0, 3, 600))
    assert stats.labels == SCORED_MODALITIES
    with np.load(io.BytesIO(stats.to_bytes()), allow_pickle=False) as npz:
        assert npz["labels"].tolist() == ["ct", "cxr"]
        assert int(npz["descriptor_version"]) == gate.DESCRIPTOR_VERSION
