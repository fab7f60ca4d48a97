"""``pip install .`` (not editable) gives a working app; the editable install keeps working.

Slow (about a minute on 2 cores). From a clean clone of this repository at HEAD:

* the sdist and the wheel are built with the PEP 517 hooks of ``setup.py`` (as ``pip install .``
  and ``python -m build`` do); a second wheel built from the unpacked sdist must hold the same
  files, so both distributions carry the models and samples;
* the wheel holds exactly the selection of ``packaging/shipped.py`` under ``lunglens/_data``
  (no ``reference_fp32`` graph, metrics or plots);
* it is installed with ``pip install --no-deps --no-index`` into a fresh venv whose only view of
  the test environment is its site-packages (for the dependencies; the ``.pth`` file that makes
  the test environment's LungLens importable is not processed there), and run from outside the
  clone with a clean environment: ``lunglens models --verify``, ``lunglens demo --no-gui`` and
  ``lunglens selftest`` pass and read the installed package's own data;
* ``pip install -e`` of the clone into another fresh venv reads the clone's ``models/``.

No network is used.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from dist_helpers import clean_clone, clean_env, load_packaging_module
from lunglens.models import discover_models

pytestmark = pytest.mark.slow

_BUILD = "import sys; from setuptools import build_meta as b; print(b.build_{}(sys.argv[1]))"


def _build(kind: str, source: Path, out: Path) -> Path:
    """Run the ``build_sdist``/``build_wheel`` hook in ``source``; return the file it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD.format(kind), str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"build_{kind} failed:\n{proc.stdout[-3000:]}\n{proc.stderr}"
    return out / proc.stdout.strip().splitlines()[-1]


def _venv(path: Path) -> Path:
    """A fresh venv that sees this environment's packages (dependencies) but no LungLens."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # Path lines only: .pth files inside these folders (the editable LungLens) are not processed.
    Path(site, "_test_env.pth").write_text("\n".join(sorted(ours)) + "\n", encoding="utf-8")
    return python


def _pip_install(python: Path, *args: str) -> None:
    """``pip install`` into the venv of ``python``, offline, without dependencies.

    ``--ignore-installed``: pip must neither count the test environment's LungLens (visible
    through the ``.pth`` file) as already installed nor try to uninstall it.
    """
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    proc = subprocess.run(
        [*pip, "--no-deps", "--no-index", "--no-build-isolation", "--ignore-installed", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _lunglens(python: Path, args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    run_dir = tmp / "run"
    run_dir.mkdir(exist_ok=True)
    return subprocess.run(
        [str(python.parent / "lunglens"), *args],
        env=clean_env(tmp),
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A clean clone, its sdist, its wheel and a wheel built from the unpacked sdist."""
    tmp = tmp_path_factory.mktemp("wheel")
    clone = clean_clone(tmp / "src" / "lunglens")
    sdist = _build("sdist", clone, tmp / "dist")
    wheel = _build("wheel", clone, tmp / "dist")
    with tarfile.open(sdist) as tf:
        tf.extractall(tmp / "unpacked", filter="data")
    from_sdist = _build("wheel", tmp / "unpacked" / sdist.name.removesuffix(".tar.gz"), tmp / "w2")
    return {"clone": clone, "sdist": sdist, "wheel": wheel, "wheel_from_sdist": from_sdist}


def test_distributions_carry_the_shipped_selection(built: dict[str, Path]) -> None:
    shipped = load_packaging_module("shipped")
    want = sorted(str(dest) for _, dest in shipped.distribution_files(built["clone"]))
    assert any(w.endswith("/model.onnx") for w in want)
    assert "resources/samples/LICENSE.md" in want

    def data_of(wheel: Path) -> list[str]:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
        return sorted(n.removeprefix("lunglens/_data/") for n in names if "/_data/" in n)

    assert data_of(built["wheel"]) == want
    assert data_of(built["wheel_from_sdist"]) == want
    with tarfile.open(built["sdist"]) as tf:
        top = built["sdist"].name.removesuffix(".tar.gz") + "/"
        in_sdist = sorted(
            n.removeprefix(top)
            for n in tf.getnames()
            if n.startswith((top + "models/", top + "resources/")) and tf.getmember(n).isfile()
        )
    assert in_sdist == want


def test_installed_wheel_runs_the_app(built: dict[str, Path], tmp_path: Path) -> None:
    python = _venv(tmp_path / "venv")
    _pip_install(python, str(built["wheel"]))
    data = (
        Path(
            subprocess.run(
                [str(python), "-c", "import lunglens; print(lunglens.__file__)"],
                env=clean_env(tmp_path),
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        ).parent
        / "_data"
    )
    assert data.is_relative_to(tmp_path / "venv"), data  # the installed copy, not the checkout
    names = [m.name for m in discover_models(built["clone"] / "models")[0]]

    proc = _lunglens(python, ["models", "--verify"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"models in {data / 'models'}:" in proc.stdout
    for name in names:
        assert any(
            line.strip().startswith(name) and "verified" in line
            for line in proc.stdout.splitlines()
        ), (name, proc.stdout)

    proc = _lunglens(python, ["demo", "--no-gui"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    samples = sorted(p.name for p in (built["clone"] / "resources" / "samples").glob("*.*"))
    for sample in (s for s in samples if not s.endswith(".md")):
        row = next(line for line in proc.stdout.splitlines() if line.startswith(sample))
        if sample == "ct-dicom-enhanced-2frames-rle.dcm":  # a brain CT: the gate refuses it
            assert "refused, no score: not a chest scan: body part BRAIN" in row, row
        else:
            assert "error" not in row, row

    proc = _lunglens(python, ["selftest"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"resources: {data / 'resources'}" in proc.stdout
    assert "self-test PASSED" in proc.stdout


def test_editable_install_reads_the_checkout(built: dict[str, Path], tmp_path: Path) -> None:
    python = _venv(tmp_path / "venv")
    _pip_install(python, "-e", str(built["clone"]))
    proc = _lunglens(python, ["models", "--verify"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"models in {built['clone'] / 'models'}:" in proc.stdout
    assert not (built["clone"] / "desktop" / "lunglens" / "_data").exists()
