"""The self-contained bundle (issue #8): build it from a clean checkout and use it.

Slow (about 2-4 minutes on 2 cores): ``git clone`` of this repository at HEAD into a temporary
folder, ``packaging/build.py --use-current-env`` (PyInstaller from the test environment; the spec
excludes torch & co.), then the bundled binary is run with a sanitized environment (no virtualenv
on PATH, no PYTHONPATH, offscreen Qt, data and home in the temporary folder, cwd outside the
repository):

* ``lunglens selftest`` passes (model hashes, one inference, pylibjpeg plugins, J2K/RLE DICOM,
  Qt platform plugins) and reports running as a bundled app from the bundle's own folders;
* ``lunglens models --verify`` passes;
* ``lunglens score resources/samples --out x.csv`` writes one row per sample, ``ok`` for every
  scan the source tree also scores (the CXR DICOM is refused by the CT model there too), with
  the same probabilities as the source tree run in this environment.

No network is used: the build reuses the installed PyInstaller and packages.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dist_helpers import REPO, clean_clone, clean_env, load_packaging_module

pytestmark = pytest.mark.slow

#: Regression ceiling for the unpacked bundle (measured 345 MiB with OpenCV 5 and PySide6 6.11
#: after packaging/bundle_trim.py, 450 MiB before; see packaging/README.md for the breakdown and
#: the 250 MB target).
MAX_BUNDLE_MIB = 380


def _rows(csv_path: Path) -> dict[str, dict[str, str]]:
    with csv_path.open(newline="", encoding="utf-8") as fh:
        return {Path(r["path"]).name: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Build the bundle from a clean clone; return (bundle folder, clone)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the bundle test builds the Linux bundle (see packaging/README.md for Windows)")
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        pytest.skip(
            "PyInstaller is not installed (it is in the 'test' extra: pip install -e '.[test]')"
        )
    tmp = tmp_path_factory.mktemp("bundle")
    clone = clean_clone(tmp / "src" / "lunglens")
    shared = REPO.parent / "shared"
    if shared.is_dir():  # same layout as a developer checkout (not needed by the build)
        (clone.parent / "shared").symlink_to(shared)
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LUNGLENS_MODELS_DIR")}
    proc = subprocess.run(
        [
            *nice,
            sys.executable,
            str(clone / "packaging" / "build.py"),
            "--use-current-env",
            "--dist",
            str(tmp / "dist"),
            "--work",
            str(tmp / "work"),
            "--no-archive",
        ],
        env=env,
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    shutil.rmtree(tmp / "work", ignore_errors=True)
    return tmp / "dist" / "lunglens", clone


def _run(exe: Path, args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    run_dir = tmp / "run"
    run_dir.mkdir(exist_ok=True)
    return subprocess.run(
        [str(exe), *args],
        env=clean_env(tmp),
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_bundle_layout(bundle: tuple[Path, Path]) -> None:
    folder, _ = bundle
    internal = folder / "_internal"
    assert (folder / "lunglens").is_file() and os.access(folder / "lunglens", os.X_OK)
    for leaked in ("torch", "torchvision", "timm", "onnxscript", "tkinter"):
        assert not (internal / leaked).exists(), f"{leaked} must not be bundled"
    assert not (internal / "lunglens" / "training").exists()
    assert list(internal.glob("models/*/manifest.json")), "models not bundled"
    assert (internal / "resources" / "samples").is_dir()
    assert list(internal.glob("pylibjpeg-*.dist-info/METADATA"))
    for dist in ("pylibjpeg_openjpeg", "pylibjpeg_libjpeg", "pylibjpeg_rle"):  # the plugins
        assert list(internal.glob(f"{dist}-*.dist-info/entry_points.txt")), dist
    assert (internal / "PySide6" / "Qt" / "plugins" / "platforms" / "libqxcb.so").is_file()
    assert (internal / "PySide6" / "Qt" / "plugins" / "imageformats" / "libqsvg.so").is_file()
    # Trimmed (packaging/lunglens.spec, packaging/bundle_trim.py): unused plugins/libraries...
    for gone in (
        "PySide6/Qt/lib/libQt6Network.so.6",
        "PySide6/Qt/plugins/imageformats/libqtiff.so",
        "yaml",
        "jinja2",
        "libssl.so.3",
        "matplotlib/mpl-data/fonts/ttf/STIXGeneral.ttf",
    ):
        assert not (internal / gone).exists(), f"{gone} should be trimmed"
    assert not list(internal.glob("PIL/_avif*")) and list(internal.glob("PIL/_imaging.*"))
    # ...the ICU data reduced, debug info stripped.
    assert all(
        p.stat().st_size < 12 * 2**20 for p in internal.glob("PySide6/Qt/lib/libicudata.so.*")
    )
    trim = load_packaging_module("bundle_trim")
    for lib in internal.glob("libpython3*.so*"):
        elf = trim.read_elf(lib)
        assert elf is not None and elf.debug_bytes == 0 and elf.segments_congruent()
    desktop = (folder / "share" / "applications" / "lunglens.desktop").read_text()
    assert "Exec=lunglens gui %F" in desktop and "Icon=lunglens" in desktop
    assert (folder / "share/icons/hicolor/256x256/apps/lunglens.png").is_file()
    assert (folder / "install.sh").is_file()
    size_mib = (
        sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
        / 2**20
    )
    print(f"bundle size: {size_mib:.1f} MiB")
    assert size_mib < MAX_BUNDLE_MIB


def test_bundle_selftest(bundle: tuple[Path, Path], tmp_path: Path) -> None:
    folder, _ = bundle
    proc = _run(folder / "lunglens", ["selftest"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "self-test PASSED" in out and "(bundled app;" in out
    assert f"models:    {folder / '_internal' / 'models'}" in out  # its own models, not the repo's
    assert "libjpeg, openjpeg, rle" in out and "RLE Lossless" in out and "JPEG 2000" in out
    proc = _run(folder / "lunglens", ["models", "--verify"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified" in proc.stdout


def _score_both_ways(
    folder: Path,
    clone: Path,
    model: str,
    tmp: Path,
) -> tuple[dict[str, dict[str, str]], int]:
    """Score the samples with ``model`` in the bundle and from the clone's source; compare."""
    samples = clone / "resources" / "samples"
    out_csv = tmp / f"{model}.csv"
    proc = _run(
        folder / "lunglens", ["score", str(samples), "--model", model, "--out", str(out_csv)], tmp
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 1: some scans errored
    rows = _rows(out_csv)
    # The same command from the clone's source tree in this Python environment.
    ref_csv = tmp / f"{model}-ref.csv"
    env = dict(
        os.environ,
        PYTHONPATH=str(clone / "desktop"),
        LUNGLENS_MODELS_DIR=str(clone / "models"),
        LUNGLENS_DATA_DIR=str(tmp / "d2"),
        QT_QPA_PLATFORM="offscreen",
    )
    ref = subprocess.run(
        [
            sys.executable,
            "-m",
            "lunglens",
            "score",
            str(samples),
            "--model",
            model,
            "--out",
            str(ref_csv),
            "--no-report",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ref.returncode == proc.returncode, ref.stdout + ref.stderr
    ref_rows = _rows(ref_csv)
    assert sorted(rows) == sorted(ref_rows)
    for name, row in rows.items():
        want = ref_rows[name]
        assert row["status"] == want["status"], (name, row["error"], want["error"])
        if want["status"] == "ok":
            assert row["model_sha256"] == want["model_sha256"]
            assert row["prediction"] == want["prediction"]
            for key in (k for k in want if k.startswith("p_")):
                assert float(row[key]) == pytest.approx(float(want[key]), abs=1e-4), (name, key)
    return rows, proc.returncode


#: Bundled samples that are not chest scans: the 2-frame enhanced CT is a brain perfusion
#: (BodyPartExamined BRAIN), kept among the samples to show how a non-chest scan is refused.
NOT_CHEST_SAMPLES = frozenset({"ct-dicom-enhanced-2frames-rle.dcm"})


def test_bundle_scores_samples_like_source(bundle: tuple[Path, Path], tmp_path: Path) -> None:
    """The default models (one per modality) score the samples in the bundle exactly as from source.

    One model per results file (docs/results-csv.md): the CT run turns the X-ray samples into
    ``ModalityMismatch`` error rows and the X-ray run the CT ones, so each sample must score
    under the model of its own modality.
    """
    folder, clone = bundle
    samples = clone / "resources" / "samples"
    expected_files = sorted(p.name for p in samples.iterdir() if p.suffix != ".md")
    from lunglens.models import default_model_for

    ct, cxr = (default_model_for(m, clone / "models").name for m in ("ct", "cxr"))
    ct_rows, _ = _score_both_ways(folder, clone, ct, tmp_path)
    cxr_rows, _ = _score_both_ways(folder, clone, cxr, tmp_path)
    assert sorted(ct_rows) == sorted(cxr_rows) == expected_files, "one row per sample"
    for name in expected_files:
        own = cxr_rows if name.startswith("cxr-") else ct_rows
        other = ct_rows if name.startswith("cxr-") else cxr_rows
        if name in NOT_CHEST_SAMPLES:  # refused by the chest-image gate, bundle and source alike
            assert own[name]["status"] == other[name]["status"] == "error", name
            assert own[name]["error"].startswith("NotChestImage"), own[name]["error"]
            continue
        assert own[name]["status"] == "ok", (name, own[name]["error"])
        # A scan of the other modality is refused, never scored silently, when its DICOM
        # header says so (the plain images depend on how sure the pixel check is).
        if name.endswith(".dcm"):
            assert other[name]["status"] == "error", name
            assert other[name]["error"].startswith("ModalityMismatch"), other[name]["error"]
    # Compressed DICOM (JPEG 2000 CT and DX, RLE enhanced CT) decodes inside the bundle.
    assert "ct-dicom-chest-j2k.dcm" in {n for n, r in ct_rows.items() if r["status"] == "ok"}
    assert "cxr-dicom-dx-nccid-j2k.dcm" in {n for n, r in cxr_rows.items() if r["status"] == "ok"}


#: Qt calls that reach ICU in this app: collation (QCollator; the Qt file dialog sorts with it)
#: for a few locales, numeric mode, and locale case mapping.
_ICU_PROBE = """
import functools
from PySide6.QtCore import QCollator, QLocale, Qt
names = ["b10.dcm", "b9.dcm", "\\u00c4pfel.png", "apfel.png", "zebra.tif", "\\u00c5ngstr\\u00f6m"]
for loc in ("en_US", "de_DE", "sv_SE", "ja_JP"):
    c = QCollator(QLocale(loc))
    c.setNumericMode(True)
    c.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
    print(loc, sorted(names, key=functools.cmp_to_key(c.compare)))
print(QLocale("tr_TR").toUpper("istanbul"), QLocale("de_DE").toUpper("stra\\u00dfe"))
"""


def test_bundle_icu_data_serves_qt(bundle: tuple[Path, Path]) -> None:
    """The reduced libicudata gives Qt the same collation/case mapping as the full one.

    Runs this environment's PySide6 (the one the bundle was built from) with the bundle's
    libicudata preloaded in place of its own.
    """
    folder, _ = bundle
    libs = sorted((folder / "_internal" / "PySide6" / "Qt" / "lib").glob("libicudata.so.*"))
    if not libs:
        pytest.skip("this Qt does not use ICU")
    import PySide6

    own = Path(PySide6.__file__).parent / "Qt" / "lib" / libs[0].name
    if not own.is_file():
        pytest.skip(f"this environment's Qt has no {libs[0].name}")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    full = subprocess.run(
        [sys.executable, "-c", _ICU_PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    reduced = subprocess.run(
        [sys.executable, "-c", _ICU_PROBE],
        env=dict(env, LD_PRELOAD=str(libs[0])),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert full.returncode == 0, full.stderr
    assert reduced.returncode == 0, reduced.stderr
    assert reduced.stdout == full.stdout
    assert "sv_SE ['apfel.png', 'b9.dcm', 'b10.dcm', 'zebra.tif'" in reduced.stdout
    assert "collator" not in reduced.stderr.lower()
