"""Build the self-contained LungLens bundle (PyInstaller one-folder) and its archive.

    python packaging/build.py                      # clean build venv, then the bundle
    python packaging/build.py --use-current-env    # reuse this Python (needs pyinstaller)

Steps
    1. A build virtualenv (``packaging/build/venv``) with only the base dependencies of
       ``pyproject.toml`` plus PyInstaller, so nothing from the training extra (torch...) can be
       picked up. ``--use-current-env`` skips this (CI, or offline machines); the spec still
       excludes torch & co. and fails when one of them leaks in.
    2. ``pyinstaller packaging/lunglens.spec`` -> ``<dist>/lunglens/``.
    3. Linux: the desktop entry, icons and ``install.sh`` are copied beside the executable.
    4. Self-test of the fresh bundle (``lunglens selftest``), unless ``--no-selftest``.
    5. ``<dist>/lunglens-<version>-<os>-<arch>.tar.gz`` (``.zip`` on Windows), unless
       ``--no-archive``; size and timings printed and written to ``<dist>/build-report.json``.

Works on Linux and Windows (run it there with the same Python minor version as the target;
PyInstaller does not cross-compile). Exit code 0 on success.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

PACKAGING = Path(__file__).resolve().parent
REPO = PACKAGING.parent
IS_WIN = sys.platform == "win32"
EXE = "lunglens.exe" if IS_WIN else "lunglens"


def log(msg: str) -> None:
    print(f"[build] {msg}", flush=True)


def run(cmd: list[str], **kw: object) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)  # type: ignore[call-overload]


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if IS_WIN else "bin/python")


def base_dependencies() -> list[str]:
    """``[project].dependencies`` of pyproject.toml (the runtime, no extras)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return list(data["project"]["dependencies"])


def make_build_env(venv: Path, pip_args: list[str], pyinstaller: str) -> Path:
    """A fresh venv with the base dependencies + PyInstaller; returns its python."""
    if venv.exists():
        shutil.rmtree(venv)
    run([sys.executable, "-m", "venv", venv])
    py = venv_python(venv)
    run([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip", *pip_args])
    # The package itself is analysed from the source tree (spec pathex); install only its deps.
    run([py, "-m", "pip", "install", "--quiet", *pip_args, *base_dependencies(), pyinstaller])
    return py


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def add_desktop_files(bundle: Path) -> None:
    """Linux: .desktop entry, icons and the offline installer beside the executable."""
    share = bundle / "share"
    (share / "applications").mkdir(parents=True, exist_ok=True)
    shutil.copy2(PACKAGING / "linux" / "lunglens.desktop", share / "applications")
    icons = share / "icons" / "hicolor"
    (icons / "256x256" / "apps").mkdir(parents=True, exist_ok=True)
    (icons / "scalable" / "apps").mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "resources/icons/lunglens-256.png", icons / "256x256/apps/lunglens.png")
    shutil.copy2(REPO / "resources/icons/lunglens.svg", icons / "scalable/apps/lunglens.svg")
    for name in ("install.sh", "uninstall.sh"):
        dst = bundle / name
        shutil.copy2(PACKAGING / "linux" / name, dst)
        dst.chmod(0o755)


def archive(bundle: Path, version: str) -> Path:
    system = "windows" if IS_WIN else platform.system().lower()
    stem = f"lunglens-{version}-{system}-{platform.machine().lower()}"
    if IS_WIN:
        out = bundle.parent / f"{stem}.zip"
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(bundle.rglob("*")):
                zf.write(f, Path("lunglens") / f.relative_to(bundle))
        return out
    out = bundle.parent / f"{stem}.tar.gz"
    with tarfile.open(out, "w:gz", compresslevel=6) as tf:
        tf.add(bundle, arcname="lunglens")
    return out


def selftest(bundle: Path) -> tuple[int, float]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PYTHONPATH",
            "PYTHONHOME",
            "VIRTUAL_ENV",
            "LUNGLENS_MODELS_DIR",
            "LUNGLENS_RESOURCES_DIR",
        )
    }
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    t0 = time.perf_counter()
    rc = subprocess.run([str(bundle / EXE), "selftest"], env=env, cwd=bundle.parent).returncode
    return rc, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--use-current-env",
        action="store_true",
        help="build with this Python instead of a clean venv (needs pyinstaller)",
    )
    ap.add_argument(
        "--venv",
        type=Path,
        default=PACKAGING / "build" / "venv",
        help="where the clean build venv goes (default packaging/build/venv)",
    )
    ap.add_argument(
        "--dist",
        type=Path,
        default=PACKAGING / "dist",
        help="output folder (default packaging/dist)",
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=PACKAGING / "build" / "pyinstaller",
        help="PyInstaller work folder",
    )
    ap.add_argument(
        "--pip-args",
        default="",
        help="extra pip arguments for the build venv, e.g. "
        "'--no-index --find-links /media/wheels' (offline build)",
    )
    ap.add_argument(
        "--pyinstaller",
        default="pyinstaller>=6.10",
        help="PyInstaller requirement for the build venv",
    )
    ap.add_argument("--no-selftest", action="store_true", help="skip the bundle's self-test")
    ap.add_argument("--no-archive", action="store_true", help="skip the .tar.gz / .zip")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    if args.use_current_env:
        py = Path(sys.executable)
    else:
        py = make_build_env(args.venv.resolve(), args.pip_args.split(), args.pyinstaller)
    t_env = time.perf_counter() - t_start

    dist, work = args.dist.resolve(), args.work.resolve()
    bundle = dist / "lunglens"
    if bundle.exists():
        shutil.rmtree(bundle)
    env = dict(os.environ, PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    run(
        [
            py,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--clean",
            "--log-level",
            "WARN",
            "--distpath",
            dist,
            "--workpath",
            work,
            PACKAGING / "lunglens.spec",
        ],
        env=env,
    )
    t_pyi = time.perf_counter() - t0
    if not IS_WIN:
        add_desktop_files(bundle)

    size = dir_size(bundle)
    version = subprocess.run(
        [
            py,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import lunglens; "
            "print(lunglens.__version__)",
            REPO / "desktop",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    report: dict[str, object] = {
        "version": version,
        "bundle": str(bundle),
        "bundle_bytes": size,
        "bundle_mb": round(size / 2**20, 1),
        "files": sum(1 for _ in bundle.rglob("*")),
        "env_seconds": round(t_env, 1),
        "pyinstaller_seconds": round(t_pyi, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    log(f"bundle: {bundle} ({size / 2**20:.1f} MiB, {report['files']} files)")

    if not args.no_selftest:
        rc, secs = selftest(bundle)
        report["selftest_rc"], report["selftest_seconds"] = rc, round(secs, 2)
        if rc != 0:
            log(f"SELF-TEST FAILED (exit {rc})")
            (dist / "build-report.json").write_text(json.dumps(report, indent=2))
            return 1
        log(f"self-test passed in {secs:.1f} s")
    if not args.no_archive:
        t0 = time.perf_counter()
        out = archive(bundle, version)
        report["archive"], report["archive_mb"] = str(out), round(out.stat().st_size / 2**20, 1)
        log(
            f"archive: {out} ({out.stat().st_size / 2**20:.1f} MiB, "
            f"{time.perf_counter() - t0:.0f} s)"
        )
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    (dist / "build-report.json").write_text(json.dumps(report, indent=2))
    log(f"done in {report['total_seconds']} s; report: {dist / 'build-report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
