"""Corpora for the chest-image gate: non-chest files that must get no score, chest files that
must still be scored (used by tests/test_gate.py and benchmarks/bench_ood_gate.py).

The non-chest corpus is made at test time from real pixel data: photographs (``tests/data/ood``,
CC0 / public domain, and matplotlib's sample photo), rendered text pages, blank and noise
images, a render of the app's own PDF report, and DICOM files of other modalities and body
parts built with pydicom from real images (pydicom's and ``../shared/data`` test files).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from onnx_fixtures import retag

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DICOM = SHARED / "dicom"
PHOTOS = Path(__file__).resolve().parent / "data" / "ood"
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CHEST_CT = DICOM / "chest-ct-transfer-syntaxes" / "CTImage.dcm"

#: Real chest DICOM files of ../shared/data (the other files there are a brain perfusion CT
#: (CT0012..., body part BRAIN), head CT slices without a body part (CT2_J2KR, ct-misc/693_*),
#: a neck CT, an abdominal radiograph (chest-dx/sample.dcm) and a file without pixels).
CHEST_DICOM = [
    *sorted((DICOM / "chest-ct-transfer-syntaxes").glob("CTImage.dcm*")),
    DICOM / "chest-ct-transfer-syntaxes" / "CT1_J2KR",
    DICOM / "chest-cr" / "RG1_J2KI.dcm",
    *sorted((DICOM / "chest-dx").glob("1.3.6.1.4.1.*.dcm")),
]


def _secondary_capture(pixels: np.ndarray, path: Path, **attrs: Any) -> Path:
    """A DICOM file holding ``pixels`` (uint8 grey ``[H, W]`` or RGB ``[H, W, 3]``)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape[:2]
    colour = pixels.ndim == 3
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels, np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def palette_dicom(rgb: Image.Image, path: Path, frames: int = 1) -> Path:
    """A PALETTE COLOR (0028,0004) DICOM of a colour picture (256-entry 16-bit palette)."""
    quant = rgb.convert("RGB").quantize(256)
    index = np.asarray(quant, np.uint8)
    palette = np.asarray((quant.getpalette() or [])[: 3 * 256], np.uint16).reshape(-1, 3)
    ds = pydicom.dcmread(_secondary_capture(index, path))
    ds.PhotometricInterpretation = "PALETTE COLOR"
    for c in range(3):  # Red/Green/Blue Palette Color LUT Descriptor (0028,110x) and Data
        ds.add_new((0x0028, 0x1101 + c), "US", [len(palette), 0, 16])
        ds.add_new((0x0028, 0x1201 + c), "OW", (palette[:, c] * 257).astype("<u2").tobytes())
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.PixelData = np.stack([index] * frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _text_page(path: Path, size: tuple[int, int], font_size: int) -> Path:
    words = (
        "the patient was examined on arrival and the findings are reported below in full "
        "detail with the measurements and the follow up plan agreed with the referring team "
    ).split()
    im = Image.new("L", size, 255)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=font_size)
    y, i = 40, 0
    per_line = max(4, int(size[0] / (font_size * 3.5)))
    while y < size[1] - 40:
        line = " ".join(words[(i + k) % len(words)] for k in range(per_line))
        draw.text((40, y), line, fill=0, font=font)
        y += int(font_size * 1.6)
        i += per_line
    im.save(path)
    return path


def report_render(path: Path, models_dir: Path | None = None) -> Path:
    """A PNG of the app's own one-page PDF report, as a screenshot of it would look."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lunglens.inference import classify_scan
    from lunglens.io import load_scan
    from lunglens.models import default_model_for
    from lunglens.report import pdf

    scan = load_scan(CHEST_CT)
    result = classify_scan(scan, default_model_for("ct", models_dir), with_cam=True)

    class _PngPages:  # stands in for PdfPages: the same figure, saved as PNG
        def __init__(self, out: Any) -> None:
            self.out = out

        def __enter__(self) -> _PngPages:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def savefig(self, fig: Any) -> None:
            FigureCanvasAgg(fig)
            fig.savefig(str(path), dpi=100, format="png")

    original = pdf.PdfPages
    pdf.PdfPages = _PngPages  # type: ignore[misc,assignment]
    try:
        pdf.scan_pdf(scan, result, path.with_suffix(".pdf"))
    finally:
        pdf.PdfPages = original  # type: ignore[misc]
    return path


def non_chest_corpus(out: Path, models_dir: Path | None = None) -> list[tuple[str, Path]]:
    """Write the non-chest corpus under ``out``; return ``(kind, path)`` pairs."""
    import matplotlib.cbook as cbook

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items: list[tuple[str, Path]] = []

    def png(kind: str, name: str, pixels: np.ndarray) -> None:
        path = out / name
        Image.fromarray(pixels).save(path)
        items.append((kind, path))

    # photographs
    items += [("photo", p) for p in sorted(PHOTOS.glob("*.jpg")) + sorted(PHOTOS.glob("*.png"))]
    sample = str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    hopper = Image.open(sample).convert("RGB")
    hopper.save(out / "grace_hopper.png")
    items.append(("photo", out / "grace_hopper.png"))
    png("photo (grey)", "grace_hopper_grey.png", np.asarray(hopper.convert("L")))
    # text pages and a render of the app's own report
    for k, (size, font) in enumerate((((850, 1100), 14), ((1100, 850), 22), ((600, 800), 10))):
        items.append(("text page", _text_page(out / f"text_{k}.png", size, font)))
    items.append(("report render", report_render(out / "report.png", models_dir)))
    # blank and noise
    png("blank", "blank_black.png", np.zeros((300, 300), np.uint8))
    png("blank", "blank_white.png", np.full((300, 200), 255, np.uint8))
    png("blank", "blank_grey.png", np.full((256, 256), 128, np.uint8))
    png("noise", "noise_uniform.png", rng.integers(0, 256, (256, 256), dtype=np.uint8))
    gauss = np.clip(rng.normal(128, 40, (400, 400)), 0, 255).astype(np.uint8)
    png("noise", "noise_gauss.png", gauss)
    png("noise", "noise_rgb.png", rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    # DICOM of other modalities / body parts, real pixel data
    items.append(("MR", PYDICOM_FILES / "MR_small.dcm"))
    with gzip.open(str(cbook.get_sample_data("s1045.ima.gz", asfileobj=False))) as fh:
        mr = np.frombuffer(fh.read(), np.uint16).reshape(256, 256)
    mr8 = (mr / max(1, int(mr.max())) * 255).astype(np.uint8)
    items.append(("MR", _secondary_capture(mr8, out / "mr_brain.dcm", Modality="MR")))
    items.append(("US", PYDICOM_FILES / "examples_rgb_color.dcm"))
    items.append(("US (palette)", PYDICOM_FILES / "examples_palette.dcm"))
    items.append(("NM", _secondary_capture(mr8, out / "nm.dcm", Modality="NM")))
    items.append(("SEG", PYDICOM_FILES / "liver_1frame.dcm"))
    grey = np.asarray(hopper.convert("L"))
    items.append(("OT photo", _secondary_capture(grey, out / "photo_ot.dcm")))
    rgb = np.asarray(hopper)
    items.append(("OT colour photo", _secondary_capture(rgb, out / "photo_rgb.dcm")))
    items.append(("OT palette photo", palette_dicom(hopper, out / "photo_palette.dcm")))
    items.append(("head CT (BRAIN)", DICOM / "ct-misc" / "eCT_Supplemental.dcm"))
    frag = DICOM / "chest-ct-transfer-syntaxes" / "CT0012.fragmented_no_bot_jpeg_baseline.51.dcm"
    items.append(("head CT (BRAIN)", frag))
    items.append(("neck CT (NECK)", DICOM / "ct-misc" / "bad_sequence.dcm"))
    items.append(
        ("CT tagged HEAD", retag(CHEST_CT, out / "ct_head_tag.dcm", BodyPartExamined="HEAD"))
    )
    items.append(
        (
            "CT localizer",
            retag(CHEST_CT, out / "ct_scout.dcm", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]),
        )
    )
    src = DICOM / "chest-dx" / next(iter(p.name for p in (DICOM / "chest-dx").glob("1.3.*")))
    items.append(
        ("CR of the hand", retag(src, out / "hand.dcm", Modality="CR", BodyPartExamined="HAND"))
    )
    return items


def hard_cases(out: Path) -> list[tuple[str, Path]]:
    """Grey medical images of another body part without any tag saying so: only the pixels
    can tell. The gate's learned check passes all five; since modality check 1.1.0 the CT
    feature check refuses the head CT slices and the brain MR, and the abdominal radiograph
    is still scored (measured by bench_ood_gate, stated in the modality-check model card).
    Kept apart so the benchmark reports them."""
    import matplotlib.cbook as cbook

    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(str(cbook.get_sample_data("s1045.ima.gz", asfileobj=False))) as fh:
        mr = np.frombuffer(fh.read(), np.uint16).reshape(256, 256)
    mr8 = (mr / max(1, int(mr.max())) * 255).astype(np.uint8)
    return [
        ("head CT, untagged", DICOM / "chest-ct-transfer-syntaxes" / "CT2_J2KR"),
        ("head CT, untagged", DICOM / "ct-misc" / "693_J2KR.dcm"),
        ("head CT, untagged", DICOM / "ct-misc" / "693_UNCI.dcm"),
        ("brain MR as OT, untagged", _secondary_capture(mr8, out / "mr_brain_ot.dcm")),
        ("abdominal X-ray, untagged", DICOM / "chest-dx" / "sample.dcm"),
    ]


def training_images() -> Iterator[tuple[str, str, Path]]:
    """``(data set, source, path)`` of every image of ct-covid-binary and cxr-3class."""
    import csv

    for name in ("ct-covid-binary", "cxr-3class"):
        root = SHARED / name
        with open(root / "manifest.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                yield name, row["source"], root / row["path"]
