"""The DICOM reader's parts on hand-built data sets: header rules, functional groups, pixel
decoding steps and VOI, each without a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from lunglens.errors import CorruptFile, UnsupportedTransferSyntax
from lunglens.io import Modality, dicom_file
from lunglens.io.dicom_common import frame_value, text
from lunglens.io.dicom_pixels import check_transfer_syntax, modality_values, to_grey_frames
from lunglens.io.dicom_rules import body_part, classify_modality, image_type
from lunglens.io.dicom_voi import file_window, percentile_window, to_display
from lunglens.preprocess import WINDOW_PRESETS, Window


def _ds(**attrs: object) -> Dataset:
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize(
    ("attrs", "modality", "noted"),
    [
        ({"Modality": "CT"}, Modality.CT, False),
        ({"Modality": "DX", "BodyPartExamined": "CHEST"}, Modality.CXR, False),
        ({"Modality": "CR"}, Modality.CXR, True),  # no body part: assumed, and said so
        ({"Modality": "OT", "SeriesDescription": "PA thorax"}, Modality.CXR, False),
        ({"Modality": "SC"}, Modality.UNKNOWN, True),
        ({"Modality": "MR", "BodyPartExamined": "CHEST"}, Modality.UNKNOWN, False),
    ],
)
def test_modality_rules(attrs: dict[str, str], modality: Modality, noted: bool) -> None:
    got, notes = classify_modality(_ds(**attrs), Path("x.dcm"))
    assert got is modality and bool(notes) == noted


def test_body_part_and_image_type_fallbacks() -> None:
    region = _ds(CodeMeaning="Thorax")
    assert body_part(_ds(AnatomicRegionSequence=Sequence([region]))) == "THORAX"
    shared = _ds(FrameAnatomySequence=Sequence([_ds(AnatomicRegionSequence=Sequence([region]))]))
    assert body_part(_ds(SharedFunctionalGroupsSequence=Sequence([shared]))) == "THORAX"
    assert body_part(_ds()) == ""
    assert image_type(_ds(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])) == (
        "ORIGINAL\\PRIMARY\\LOCALIZER"
    )
    assert image_type(_ds()) == "" and text(_ds(), "Modality") == ""


def test_frame_value_per_frame_then_shared_then_top_level() -> None:
    def group(slope: str) -> Dataset:
        return _ds(PixelValueTransformationSequence=Sequence([_ds(RescaleSlope=slope)]))

    ds = _ds(
        RescaleSlope="9",
        PerFrameFunctionalGroupsSequence=Sequence([group("2"), _ds()]),
        SharedFunctionalGroupsSequence=Sequence([group("3")]),
    )
    seq = "PixelValueTransformationSequence"
    assert [float(frame_value(ds, i, seq, "RescaleSlope")) for i in (0, 1)] == [2.0, 3.0]
    assert float(frame_value(_ds(RescaleSlope="9"), 0, seq, "RescaleSlope")) == 9.0


def test_each_frame_gets_its_own_rescale() -> None:
    def group(slope: str, intercept: str) -> Dataset:
        item = _ds(RescaleSlope=slope, RescaleIntercept=intercept, RescaleType="HU")
        return _ds(PixelValueTransformationSequence=Sequence([item]))

    ds = _ds(PerFrameFunctionalGroupsSequence=Sequence([group("1", "-1024"), group("2", "0")]))
    out = modality_values(ds, np.full((2, 2, 2), 100, np.int16))
    assert out.dtype == np.float32 and out[:, 0, 0].tolist() == [-924.0, 200.0]


def test_colour_frames_become_grey_and_frame_count_is_checked() -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255
    notes: list[str] = []
    ds = _ds(SamplesPerPixel=3, PhotometricInterpretation="RGB")
    grey, colour = to_grey_frames(ds, rgb, 1, notes)
    assert grey.shape == (1, 4, 4) and grey[0, 0, 0] == pytest.approx(0.299 * 255)
    assert colour > 0 and "converted to grey" in notes[0]
    with pytest.raises(CorruptFile, match="header says 2"):
        to_grey_frames(_ds(SamplesPerPixel=1), np.zeros((4, 4)), 2, [])


def test_unknown_transfer_syntax_is_refused_before_decoding() -> None:
    ds = _ds()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID("1.2.3.4.5")
    with pytest.raises(UnsupportedTransferSyntax, match="cannot be decoded"):
        check_transfer_syntax(ds, Path("odd.dcm"))
    assert str(check_transfer_syntax(_ds(), Path("x.dcm"))) == "1.2.840.10008.1.2"


def test_voi_order_for_xray_and_ct() -> None:
    values = np.linspace(0, 1000, 64, dtype=np.float32).reshape(1, 8, 8)
    notes: list[str] = []
    ct, win = to_display(values, _ds(), Modality.CT, False, None, notes)
    assert win == WINDOW_PRESETS["lung"] and ct.min() >= 0 and ct.max() <= 1
    with_win = _ds(WindowCenter="500", WindowWidth="200", VOILUTFunction="SIGMOID")
    assert file_window(with_win) == (Window(500, 200, "file"), "SIGMOID")
    img, used = to_display(values, with_win, Modality.CXR, True, None, notes)
    assert used == Window(500, 200, "file") and img[0, 0, 0] > 0.99  # inverted after VOI
    img, used = to_display(values, _ds(), Modality.CXR, False, "lung", notes)
    assert used is not None and used.name == "percentile" and "ignored for X-ray" in notes[0]
    assert dicom_file.percentile_window is percentile_window  # the viewer's import
