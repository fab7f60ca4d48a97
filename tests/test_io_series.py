"""DICOM series folders and batch discovery, built in tmp_path from copies of a real CT slice."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from lunglens.errors import CorruptFile
from lunglens.io import SourceKey, discover_sources, list_series, load_scan, load_source

DICOM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
CT = (
    DICOM
    / "chest-ct-transfer-syntaxes"
    / ("CTImage.dcm_LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1.dcm")
)
pytestmark = pytest.mark.skipif(not CT.is_file(), reason="shared DICOM data not available")


def make_series(
    folder: Path,
    n: int,
    *,
    series_uid: str | None = None,
    marker0: int = 0,
    with_position: bool = True,
    seed: int = 0,
) -> tuple[str, list[int]]:
    """Write ``n`` slices with random file names and InstanceNumbers unrelated to position.

    Slice k sits at z = -100 + 5k and carries the marker ``marker0 + k`` in pixel (0, 0) so
    the test can read back the order. Returns the SeriesInstanceUID and the markers.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    uid = series_uid or generate_uid()
    base = pydicom.dcmread(CT)
    instance_numbers = list(range(1, n + 1))
    rng.shuffle(instance_numbers)
    for k in range(n):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = instance_numbers[k]
        if with_position:
            ds.ImagePositionPatient = [-170.0, -170.0, -100.0 + 5 * k]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        else:
            del ds.ImagePositionPatient
        arr = ds.pixel_array.copy()
        arr[0, 0] = marker0 + k + 1024  # stored value; HU = value - 1024
        ds.PixelData = arr.tobytes()
        ds.save_as(folder / f"{rng.getrandbits(48):012x}", enforce_file_format=True)
    return uid, [marker0 + k for k in range(n)]


def test_series_ordered_by_position_not_names_or_instance_numbers(tmp_path: Path) -> None:
    _, markers = make_series(tmp_path / "s", 6)
    (tmp_path / "s" / "scanner.log.bin").write_bytes(b"\x00not dicom" * 40)
    scan = load_scan(tmp_path / "s")
    assert scan.kind == "dicom-series" and scan.modality == "ct" and scan.n_slices == 6
    assert scan.raw[:, 0, 0].tolist() == markers
    assert scan.slice_positions == [-100.0 + 5 * k for k in range(6)]
    assert any("ignored non-DICOM file" in n and "scanner.log.bin" in n for n in scan.notes)
    assert scan.metadata["n_files"] == "6"


def test_series_with_tilted_orientation_uses_the_normal(tmp_path: Path) -> None:
    folder = tmp_path / "tilt"
    make_series(folder, 4)
    # tilt: rows along x, columns along (0, cos, -sin); normal = (0, sin, cos)
    c, s = np.cos(0.3), np.sin(0.3)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        z = float(ds.ImagePositionPatient[2])
        ds.ImageOrientationPatient = [1, 0, 0, 0, c, -s]
        ds.ImagePositionPatient = [0.0, s * z, c * z]
        ds.save_as(f)
    scan = load_scan(folder)
    assert scan.raw[:, 0, 0].tolist() == [0, 1, 2, 3]
    assert np.allclose(scan.slice_positions, [-100, -95, -90, -85])


def test_series_falls_back_to_instance_number(tmp_path: Path) -> None:
    make_series(tmp_path / "s", 5, with_position=False)
    scan = load_scan(tmp_path / "s")
    numbers = [
        pydicom.dcmread(p.split("#")[0], stop_before_pixels=True).InstanceNumber
        for p in scan.slice_paths
    ]
    assert numbers == sorted(numbers)
    assert scan.slice_positions is None
    assert any("InstanceNumber" in n for n in scan.notes)


def test_two_series_mixed_picks_largest_and_lists_both(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    uid_a, markers_a = make_series(folder, 5, marker0=0, seed=1)
    uid_b, _ = make_series(folder, 3, marker0=100, seed=2)
    scan = load_scan(folder)
    assert scan.metadata["series_uid"] == uid_a
    assert scan.raw[:, 0, 0].tolist() == markers_a
    assert any("1 other series" in n and uid_b in n for n in scan.notes)
    series = list_series(folder)
    assert [(s.uid, s.n_files) for s in series] == [(uid_a, 5), (uid_b, 3)]


def test_discovery_and_load_source(tmp_path: Path) -> None:
    root = tmp_path / "batch"
    uid_a, _ = make_series(root / "study1", 4, seed=3)
    uid_b, markers_b = make_series(root / "study1", 2, marker0=50, seed=4)
    (root / "xr").mkdir()
    Image.fromarray(np.full((32, 32), 77, np.uint8)).save(root / "xr" / "a.png")
    (root / "xr" / "broken.jpg").write_bytes(b"\x00" * 100)  # junk with an image name
    (root / "xr" / "notes.txt").write_text("hello")
    (root / "xr" / ".hidden.png").write_bytes(b"x")
    (root / "LICENSE").write_text("MIT")
    single = root / "single.dcm"
    single.write_bytes(CT.read_bytes())
    (root / "sr.dcm").write_bytes((DICOM / "ct-misc" / "no-pixel-data.dcm").read_bytes())
    ignored: list[str] = []
    sources, errors = discover_sources(root, ignored=ignored)
    by_key = {s.key: s for s in sources}
    assert errors == []
    assert set(by_key) == {
        f"{root / 'study1'}#{uid_a}",
        f"{root / 'study1'}#{uid_b}",
        str(root / "xr" / "a.png"),
        str(root / "xr" / "broken.jpg"),
        str(single),
    }
    assert by_key[f"{root / 'study1'}#{uid_a}"].kind == "dicom-series"
    assert len(by_key[f"{root / 'study1'}#{uid_a}"].paths) == 4
    assert by_key[str(single)].kind == "dicom"
    assert {"notes.txt", ".hidden.png", "LICENSE", "sr.dcm"} <= {
        Path(n.split(": ")[0].removeprefix("ignored ")).name for n in ignored
    }
    b = load_source(by_key[f"{root / 'study1'}#{uid_b}"])
    assert b.n_slices == 2 and b.raw[:, 0, 0].tolist() == markers_b
    assert b.source == f"{root / 'study1'}#{uid_b}"
    assert load_source(by_key[str(root / "xr" / "a.png")]).image[0, 0, 0] == pytest.approx(77 / 255)
    with pytest.raises(CorruptFile, match=r"broken\.jpg"):
        load_source(by_key[str(root / "xr" / "broken.jpg")])


def test_discovery_never_raises(tmp_path: Path) -> None:
    sources, errors = discover_sources(tmp_path / "missing")
    assert sources == [] and errors[0][1].code == "UnreadablePath"
    (tmp_path / "e").mkdir()
    sources, errors = discover_sources(tmp_path / "e")
    assert sources == [] and "empty" in str(errors[0][1])
    cut = tmp_path / "c" / "cut.dcm"
    cut.parent.mkdir()
    cut.write_bytes(CT.read_bytes()[:1500])
    sources, errors = discover_sources(tmp_path / "c")
    assert sources == [] and errors[0][0] == str(cut) and errors[0][1].code == "CorruptFile"


def test_real_data_discovery_is_cheap(shared_data: Path) -> None:
    import time

    t0 = time.perf_counter()
    sources, errors = discover_sources(shared_data / "dicom")
    elapsed = time.perf_counter() - t0
    assert errors == []
    # the 16 syntaxes share one SeriesInstanceUID in one folder -> one series source
    kinds = {s.kind for s in sources}
    assert kinds == {"dicom", "dicom-series"}
    assert elapsed < 5.0


def test_series_key_with_hash_in_the_folder_name(tmp_path: Path) -> None:
    """Keys are built and split by SourceKey: a folder named ``case#7`` keeps its name and the
    smaller of two series loads by its UID (the part after the last ``#``)."""
    folder = tmp_path / "case#7"
    make_series(folder, 3, seed=5)
    uid_b, markers_b = make_series(folder, 2, marker0=60, seed=6)
    sources, _ = discover_sources(folder)
    src = next(s for s in sources if s.key.endswith(uid_b))
    assert SourceKey.parse(src.key) == SourceKey(str(folder), uid_b)
    scan = load_source(src)
    assert scan.raw is not None and scan.raw[:, 0, 0].tolist() == markers_b


def test_multiframe_slices_are_named_by_frame_keys(tmp_path: Path) -> None:
    enhanced = DICOM / "ct-misc" / "eCT_Supplemental.dcm"
    if not enhanced.is_file():
        pytest.skip("multi-frame sample not available")
    scan = load_scan(enhanced)
    assert scan.n_slices > 1
    keys = [SourceKey.parse(p) for p in scan.slice_paths]
    assert {k.path for k in keys} == {str(enhanced)}
    assert sorted(int(k.part or 0) for k in keys) == list(range(1, scan.n_slices + 1))
