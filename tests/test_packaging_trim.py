"""``packaging/bundle_trim.py`` (the Linux bundle's size trimming) on this environment's real files.

Fast (no bundle build): ELF parsing, the ICU data rewrite, library pruning and the verified
stripping, on the PySide6 / NumPy / libpython files installed here. The bundle itself is
checked in ``test_packaging.py`` (slow).
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

import pytest

from dist_helpers import load_packaging_module

PACKAGING = Path(__file__).resolve().parents[1] / "packaging"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF/Linux only")


bt = load_packaging_module("bundle_trim")


@pytest.fixture(scope="module")
def qt_lib() -> Path:
    pyside = pytest.importorskip("PySide6")
    lib = Path(pyside.__file__).parent / "Qt" / "lib"
    if not lib.is_dir():
        pytest.skip("PySide6 without Qt/lib (not a Linux wheel)")
    return lib


def _icudata(qt_lib: Path) -> Path:
    found = sorted(qt_lib.glob("libicudata.so.*"))
    if not found:
        pytest.skip("this Qt does not ship ICU")
    return found[0]


def test_read_elf_needed_and_soname(qt_lib: Path) -> None:
    core = bt.read_elf(qt_lib.parent.parent / "QtCore.abi3.so")
    assert core is not None and "libQt6Core.so.6" in core.needed
    qt_core = bt.read_elf(qt_lib / "libQt6Core.so.6")
    assert qt_core is not None and qt_core.soname == "libQt6Core.so.6"
    assert qt_core.segments_congruent()
    assert bt.read_elf(PACKAGING / "lunglens.spec") is None  # not ELF


def test_icu_package_roundtrip_and_filter(qt_lib: Path, tmp_path: Path) -> None:
    lib = _icudata(qt_lib)
    data = lib.read_bytes()
    elf = bt.read_elf(lib, data)
    assert elf is not None and elf.soname
    offset, size = elf.symbol(data, f"icudt{elf.soname.rsplit('.', 1)[1]}_dat")
    header, items = bt._parse_icu_common(data[offset : offset + size])
    rebuilt = bt._build_icu_common(header, items)
    assert len(rebuilt) == size
    assert bt._parse_icu_common(rebuilt)[1] == [
        (n, b.ljust(len(b) + -len(b) % 16, b"\0")) for n, b in items
    ]
    names = [n for n, _ in items]
    kept = [n for n in names if bt.icu_keep_item(n)]
    assert any(n.endswith("/coll/root.res") for n in kept)
    assert any(n.endswith("/coll/ucadata.icu") for n in kept)
    assert any(n.endswith("/cnvalias.icu") for n in kept)
    assert not any("/brkitr/" in n or n.endswith(".cnv") or "/zone/" in n for n in kept)

    if not (shutil.which("as") and shutil.which("ld")):
        pytest.skip("binutils as/ld not installed")
    out = Path(bt.filter_icu_data(str(lib), tmp_path, log=lambda _: None))
    assert out != lib and out.name == lib.name
    new = bt.read_elf(out)
    assert new is not None and new.soname == elf.soname
    assert out.stat().st_size < lib.stat().st_size / 2
    new_data = out.read_bytes()
    new_offset, new_size = new.symbol(new_data, f"icudt{elf.soname.rsplit('.', 1)[1]}_dat")
    assert new_offset % 16 == 0
    assert [
        n for n, _ in bt._parse_icu_common(new_data[new_offset : new_offset + new_size])[1]
    ] == kept


def test_prune_drops_libraries_nobody_links(qt_lib: Path) -> None:
    ext = qt_lib.parent.parent / "QtCore.abi3.so"
    toc = [("PySide6/QtCore.abi3.so", str(ext), "EXTENSION")]
    for name in (
        "libQt6Core.so.6",
        "libQt6Network.so.6",
        *(p.name for p in qt_lib.glob("libicu*.so.*")),
    ):
        if (qt_lib / name).is_file():
            toc.append((f"PySide6/Qt/lib/{name}", str(qt_lib / name), "BINARY"))
    toc.append(("libQt6Network.so.6", "PySide6/Qt/lib/libQt6Network.so.6", "SYMLINK"))
    toc.append(("libQt6Core.so.6", "PySide6/Qt/lib/libQt6Core.so.6", "SYMLINK"))
    kept = {dest for dest, _, _ in bt.prune_unreferenced(toc, log=lambda _: None)}
    assert "PySide6/Qt/lib/libQt6Core.so.6" in kept and "libQt6Core.so.6" in kept
    assert "PySide6/Qt/lib/libQt6Network.so.6" not in kept
    assert "libQt6Network.so.6" not in kept  # its symlink goes with it
    assert all(f"PySide6/Qt/lib/{p.name}" in kept for p in qt_lib.glob("libicu*.so.*"))


def test_strip_output_always_loadable(tmp_path: Path) -> None:
    """Stripped copies keep their layout; files strip would break are passed through."""
    if shutil.which("strip") is None:
        pytest.skip("binutils strip not installed")
    candidates = []
    libdir, ldlib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlib and Path(libdir, ldlib).is_file():
        candidates.append(("libpython.so", str(Path(libdir, ldlib).resolve()), "BINARY"))
    numpy = pytest.importorskip("numpy")
    libs = Path(numpy.__file__).parent.parent / "numpy.libs"
    candidates += [(f"numpy.libs/{p.name}", str(p), "BINARY") for p in sorted(libs.glob("*.so*"))]
    if not candidates:
        pytest.skip("no shared libraries to try")
    out = bt.strip_debug_info(candidates, tmp_path, log=lambda _: None)
    for (dest, src, _), (dest2, new_src, _) in zip(candidates, out, strict=True):
        assert dest == dest2
        before, after = bt.read_elf(src), bt.read_elf(new_src)
        assert after is not None and after.needed == before.needed
        assert after.segments_congruent(), dest
        if new_src != src:
            assert after.debug_bytes == 0
            assert Path(new_src).stat().st_size < Path(src).stat().st_size
