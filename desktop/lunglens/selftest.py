"""``lunglens selftest``: prove an installation works, without network and without a display.

Run after installing the bundled app (or any install) on a clinic laptop. It checks, and prints
one line per check:

1. every installed model's ``model.onnx`` matches the SHA-256 in its manifest, loads in
   onnxruntime and scores one scan of its modality (a bundled sample when there is one, else a
   synthetic image) with finite probabilities that sum to 1 and a class activation map; the
   modality check names the family of a bundled CT and X-ray sample, and its chest-image gate
   statistics (``ood.npz``, ``ct_features.npz`` with the CT model they were fitted on) match
   their SHA-256 and let those samples through (a fault of the
   gate is reported on the modality check's line, not on the triage models');
2. the pylibjpeg decoder plugins (openjpeg, libjpeg, rle) are registered (a frozen app only
   finds them when their packages' entry-point metadata was bundled), every bundled DICOM sample
   decodes, and at least one of them is compressed;
3. onnxruntime's telemetry is off (``ORT_DISABLE_TELEMETRY=1`` was set before onnxruntime was
   imported), so nothing is sent anywhere;
4. the Qt binding loads and its platform plugins are present (skipped with ``--no-gui``).

Exit code 0 when every check passed, 1 otherwise. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from lunglens.inference.gate_stats import GateStats
    from lunglens.io.scan import Scan
    from lunglens.models.registry import ModelInfo


class _Report:
    """Collects ``ok`` / ``FAIL`` lines and whether anything failed."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failed = 0
        self.passed = 0

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def ok(self, what: str, detail: str = "") -> None:
        self.passed += 1
        self.line(f"  ok    {what}{'  ' + detail if detail else ''}")

    def fail(self, what: str, detail: str) -> None:
        self.failed += 1
        self.line(f"  FAIL  {what}  {detail}")

    def check(self, what: str, fn: Callable[[], str]) -> None:
        """Run ``fn`` (returns a detail string); any exception is a failure, never a crash."""
        t0 = time.perf_counter()
        try:
            detail = fn()
        except Exception as exc:
            self.fail(what, f"{type(exc).__name__}: {exc}")
            return
        self.ok(what, f"{detail} ({(time.perf_counter() - t0) * 1000:.0f} ms)".strip())


def _sample_files(resources: Path) -> list[Path]:
    samples = resources / "samples"
    if not samples.is_dir():
        return []
    return sorted(p for p in samples.iterdir() if p.is_file() and not p.name.endswith(".md"))


def _sample_for(info: ModelInfo, files: list[Path]) -> Scan:
    """A bundled sample of the model's modality (DICOM first), else a synthetic image."""
    import numpy as np

    from lunglens.io import Modality, load_scan
    from lunglens.io.scan import Scan

    prefix = f"{info.modality}-"
    ordered = sorted(
        (p for p in files if p.name.startswith(prefix)),
        key=lambda p: (p.suffix.lower() != ".dcm", p.name),
    )
    for path in ordered:
        try:
            scan = load_scan(path)
        except Exception:
            continue
        if scan.modality in (info.modality, Modality.UNKNOWN):
            if scan.modality == Modality.UNKNOWN:  # plain JPEG: its file name says what it is
                scan.modality = info.modality
            return scan
    h, w = info.input_size
    yy, xx = np.mgrid[0:h, 0:w]
    image = (0.5 + 0.4 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.float32)
    return Scan(source="synthetic test image", image=image, modality=info.modality)


def _check_model(info: ModelInfo, files: list[Path]) -> str:
    import numpy as np

    from lunglens.inference import classify_scan
    from lunglens.models import verify_model

    verify_model(info)  # raises ModelRefused on a hash mismatch
    scan = _sample_for(info, files)
    # The model's own scoring only: the chest-image gate and the modality check are parts of
    # the modality-check model, checked on its line, so a fault of theirs (a tampered ood.npz)
    # is blamed there instead of on every triage model.
    result = classify_scan(scan, info, with_cam=True, gate=False, modality_check=False)
    probs = np.array(list(result.probs.values()), dtype=np.float64)
    if not np.all(np.isfinite(probs)) or abs(float(probs.sum()) - 1.0) > 1e-3:
        raise ValueError(f"probabilities are not a distribution: {result.probs}")
    if result.cam is None or not np.all(np.isfinite(result.cam)):
        raise ValueError("no finite class activation map")
    return (
        f"sha256 {info.short_hash} matches; scored {Path(scan.source).name}: "
        f"p({info.positive_label})={result.positive_prob:.3f}"
    )


def _gate_accepts(info: ModelInfo, stats: GateStats | None, scan: Scan, name: str) -> None:
    """The chest-image gate's learned check (``stats``, when installed) and the CT feature check
    after it must let a bundled chest sample through: a gate refusing real chest scans would
    leave every scan unscored."""
    from lunglens.inference.gate import feature_check, learned_check

    if stats is None:
        return
    verdict = learned_check(scan, info, stats)
    if verdict.accepted:
        verdict = feature_check(scan, info, verdict, info.path.parent)
    if not verdict.accepted:
        raise ValueError(f"the chest-image gate refuses {name}: {verdict.reason}")


def _check_modality_model(info: ModelInfo, files: list[Path]) -> str:
    """The modality check must name the family of one bundled CT and one X-ray sample, and
    the chest-image gate statistics it carries (manifest ``ood``) must be intact and let those
    samples through."""
    import numpy as np

    from lunglens.inference import get_engine
    from lunglens.inference.gate import load_stats
    from lunglens.inference.gate_feature_check import load_feature_check
    from lunglens.io import load_scan
    from lunglens.models import verify_model
    from lunglens.preprocess import to_model_input

    verify_model(info)
    stats = load_stats(info)  # ModelRefused naming ood.npz when it was damaged or modified
    check = load_feature_check(info, info.path.parent)  # ... or ct_features.npz, or its model
    engine = get_engine(info)
    said = []
    for family in info.labels:
        path = next(
            (
                p
                for p in sorted(files, key=lambda p: (p.suffix.lower() != ".dcm", p.name))
                if p.name.startswith(f"{family}-")
            ),
            None,
        )
        if path is None:
            continue
        scan = load_scan(path)
        image = scan.image[scan.n_slices // 2]
        batch = to_model_input(image, info.input_size, info.preprocessing)
        probs = engine.predict(batch)["probs"][0]
        got = info.labels[int(np.argmax(probs))]
        if got != family:
            raise ValueError(
                f"{path.name} is {family} but the check says {got} (p={float(probs.max()):.2f})"
            )
        _gate_accepts(info, stats, scan, path.name)
        said.append(f"{path.name} -> {got} (p={float(probs.max()):.2f})")
    if not said:
        raise ValueError("no bundled sample to check it on")
    for block, found in (("ood", stats), ("feature_check", check)):
        if found is None:  # the gate would keep fewer rules than the shipped one: say so
            raise ValueError(
                f"its manifest names no '{block}' statistics: the chest-image gate would run "
                "without that check; reinstall the models shipped with this version"
            )
    assert check is not None  # checked just above
    gate = f"; gate statistics match (CT feature check on {check.model.name})"
    return f"sha256 {info.short_hash} matches{gate}; " + ", ".join(said)


#: What each kind of model (manifest ``task``) is checked with.
_MODEL_CHECKS = {"triage": _check_model, "modality-check": _check_modality_model}


def _check_dicom(path: Path) -> tuple[str, bool]:
    import numpy as np
    import pydicom

    from lunglens.io import load_scan

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    ts = ds.file_meta.TransferSyntaxUID
    scan = load_scan(path)
    if not np.all(np.isfinite(scan.image)) or scan.image.size == 0:
        raise ValueError("decoded image is empty or not finite")
    plugins = ""
    if ts.is_compressed:
        from pydicom.pixels.decoders.base import get_decoder

        plugins = ", plugins: " + ",".join(sorted(get_decoder(ts).available_plugins))
    shape = "x".join(str(s) for s in scan.image.shape)
    return f"{ts.name} -> {shape} {scan.modality}{plugins}", bool(ts.is_compressed)


#: pylibjpeg decoder plugins (distribution -> module): pylibjpeg finds them through their
#: ``pylibjpeg.pixel_data_decoders`` entry points, i.e. through the packages' dist-info metadata.
PYLIBJPEG_PLUGINS = {
    "pylibjpeg-openjpeg": "openjpeg",
    "pylibjpeg-libjpeg": "libjpeg",
    "pylibjpeg-rle": "rle",
}


def _check_pylibjpeg() -> str:
    from importlib.metadata import entry_points

    found = {ep.value.split(":")[0] for ep in entry_points(group="pylibjpeg.pixel_data_decoders")}
    missing = [dist for dist, mod in PYLIBJPEG_PLUGINS.items() if mod not in found]
    if missing:
        raise ImportError(
            f"pylibjpeg decoder plugins not registered: {', '.join(missing)} "
            "(their entry-point metadata is missing from this install)"
        )
    import pylibjpeg.utils

    decoders = pylibjpeg.utils.get_pixel_data_decoders()
    return f"{len(decoders)} transfer syntaxes via {', '.join(sorted(found))}"


def _check_telemetry() -> str:
    import os

    import onnxruntime

    import lunglens

    if lunglens.ONNXRUNTIME_IMPORTED_FIRST:
        raise RuntimeError(
            "onnxruntime was imported before lunglens with its telemetry on; import lunglens "
            "first (it sets ORT_DISABLE_TELEMETRY=1)"
        )
    value = os.environ.get(lunglens.TELEMETRY_ENV)
    if value != "1":
        raise RuntimeError(f"{lunglens.TELEMETRY_ENV} is {value!r}, not '1'")
    return (
        f"telemetry off: {lunglens.TELEMETRY_ENV}=1 set before onnxruntime "
        f"{onnxruntime.__version__} was imported; nothing is sent"
    )


def _check_qt() -> str:
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import QLibraryInfo
    from PySide6.QtWidgets import QApplication  # noqa: F401  (loads QtGui/QtWidgets libraries)

    plugins = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)) / "platforms"
    found = sorted(p.name for p in plugins.glob("*")) if plugins.is_dir() else []
    want = {"win32": "qwindows", "darwin": "qcocoa"}.get(sys.platform, "libqxcb")
    if not any(name.startswith(want) for name in found):
        raise FileNotFoundError(
            f"Qt platform plugin {want} missing in {plugins} "
            f"(found: {', '.join(found) or 'nothing'})"
        )
    return f"PySide6 {pyside_version}, platform plugins: {len(found)} in {plugins}"


def run(
    models_dir: str | Path | None = None,
    resources_dir: str | Path | None = None,
    *,
    gui: bool = True,
    out: TextIO | None = None,
) -> int:
    """Run every check, print a report on ``out`` (stdout) and return 0 (all ok) or 1."""
    from lunglens import __version__
    from lunglens.inference.wording import counted
    from lunglens.models import discover_models
    from lunglens.models import models_dir as find_models
    from lunglens.models import resources_dir as find_resources

    rep = _Report(out or sys.stdout)
    t0 = time.perf_counter()
    frozen = "bundled app" if getattr(sys, "frozen", False) else "Python install"
    rep.line(
        f"LungLens {__version__} self-test ({frozen}; Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()})"
    )
    mdir, rdir = find_models(models_dir), find_resources(resources_dir)
    rep.line(f"models:    {mdir}")
    rep.line(f"resources: {rdir}")
    files = _sample_files(rdir)

    rep.line("models (SHA-256, load, one inference):")
    models, problems = discover_models(mdir)
    if not models and not problems:
        rep.fail("models", f"no model folders found in {mdir}")
    for problem in problems:
        rep.fail("model folder", str(problem))
    if models and not any(m.task == "modality-check" for m in models):
        # without it the chest-image gate has only its tag and pixel rules: a head CT saved as
        # PNG would be scored, and plain images cannot be routed (classify warns, score refuses)
        rep.fail(
            "chest-image gate",
            f"no modality-check model in {mdir}: reinstall the models shipped with this version",
        )
    for info in models:
        check = _MODEL_CHECKS.get(info.task)
        if check is None:
            rep.fail(f"{info.name} {info.version}", f"unknown model task {info.task!r}")
            continue
        rep.check(
            f"{info.name} {info.version} [{info.modality}]",
            lambda info=info, check=check: check(info, files),  # type: ignore[misc]
        )

    rep.line("DICOM decoding (bundled samples):")
    rep.check("pylibjpeg plugins", _check_pylibjpeg)
    dicoms = [p for p in files if p.suffix.lower() == ".dcm"]
    compressed = 0
    for path in dicoms:

        def one(path: Path = path) -> str:
            nonlocal compressed
            detail, is_compressed = _check_dicom(path)
            compressed += is_compressed
            return detail

        rep.check(path.name, one)
    if not compressed:
        rep.fail("compressed DICOM", f"no compressed DICOM sample decoded (looked in {rdir})")

    rep.line("privacy (no network):")
    rep.check("onnxruntime telemetry", _check_telemetry)

    if gui:
        rep.line("desktop app (Qt):")
        rep.check("Qt", _check_qt)

    status = "PASSED" if not rep.failed else f"FAILED ({rep.failed} failed)"
    passed = counted(rep.passed, "check")
    rep.line(f"self-test {status}: {passed} ok in {time.perf_counter() - t0:.1f} s")
    return 0 if not rep.failed else 1


def cmd_selftest(args: argparse.Namespace) -> int:
    """``lunglens selftest``: the CLI entry (``--models-dir`` is the global option)."""
    return run(getattr(args, "models_dir", None), gui=not getattr(args, "no_gui", False))


def add_parser(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``selftest`` with the CLI's ``add(name, func, help)`` helper."""
    p = add(
        "selftest",
        cmd_selftest,
        "check this installation: model hashes and inference, DICOM decoders, telemetry off, Qt",
    )
    p.add_argument("--no-gui", action="store_true", help="skip the Qt check (servers)")
