"""Size trimming of the Linux bundle, called from ``lunglens.spec`` after PyInstaller's analysis.

Three steps, each one verified and falling back to the untouched file when in doubt:

``strip_debug_info``
    Strips ``.debug_*``/``.symtab`` from the ELF binaries that still carry them (libpython of a
    pyenv/self-built Python, pylibjpeg's decoders, kiwisolver, fontTools, Pillow's ``_imaging``,
    ...): about 57 MiB. Only files that have such sections are touched (the wheels' vendored
    libraries are already stripped), each stripped copy goes to the work folder, and a copy
    whose ``PT_LOAD`` segments are no longer page-congruent is thrown away: GNU ``strip``
    rewrites the layout of files edited by ``patchelf`` (auditwheel) and produced "ELF load
    command address/offset not page-aligned" on NumPy's OpenBLAS. That is why the spec keeps
    PyInstaller's own ``strip=False`` (it strips every binary, unchecked).
``prune_unreferenced``
    Drops shared libraries (top level of ``_internal`` and ``PySide6/Qt/lib``) that no kept
    binary needs (``DT_NEEDED`` closure from the Python extensions, Qt plugins and
    libpython). PyInstaller collects the dependencies of every Qt plugin *before* the spec
    drops the plugins it does not want, so e.g. QtNetwork (+ Kerberos), the EGLFS support
    libraries and GIO stay behind otherwise.
``filter_icu_data``
    Rebuilds ``libicudata.so.NN`` (QtCore links ICU; the data library is 31 MiB) with only the
    ICU data that Qt uses in this app: collation (``coll/``: QCollator, the Qt file dialog's
    sorting), locale and supplemental resources, normalisation and property files. Dropped:
    charset converter tables (``*.cnv``: QStringDecoder for legacy codecs; Qt's own UTF-8/16/
    32 and Latin-1 codecs do not need them), break-iterator dictionaries (Qt does its own text
    segmentation), and the display names of units, currencies, languages, regions and time
    zones, transliteration and spelled-out numbers (Qt formats with its own CLDR tables).
    The data package is rewritten in pure Python and linked with binutils ``as``/``ld``
    (PyInstaller needs binutils on Linux anyway); if a tool is missing the full data is kept.

Only ELF64 little-endian files are parsed; everything else (Windows PE, macOS) is passed through
unchanged, so calling these on Windows is a no-op.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

TocEntry = tuple[str, str, str]  # (dest name, source path, typecode): PyInstaller's TOC rows

# ----------------------------------------------------------------------------- ELF parsing

SHT_NOBITS, SHT_DYNAMIC = 8, 6
PT_LOAD = 1
DT_NEEDED, DT_SONAME = 1, 14


@dataclass
class Section:
    name: str
    type: int
    addr: int
    offset: int
    size: int
    link: int


@dataclass
class Elf:
    """The parts of an ELF64 little-endian file this module needs."""

    path: Path
    sections: list[Section] = field(default_factory=list)
    loads: list[tuple[int, int, int]] = field(default_factory=list)  # (offset, vaddr, align)
    needed: list[str] = field(default_factory=list)
    soname: str | None = None

    @property
    def debug_bytes(self) -> int:
        """Bytes in sections that ``strip --strip-unneeded`` removes (debug info, symtab)."""
        return sum(
            s.size
            for s in self.sections
            if s.name.startswith(".debug") or s.name in (".symtab", ".strtab")
        )

    def segments_congruent(self) -> bool:
        """Every PT_LOAD has offset == vaddr modulo its alignment (else ld.so refuses it)."""
        return all(align <= 1 or off % align == vaddr % align for off, vaddr, align in self.loads)

    def section_data(self, data: bytes, name: str) -> bytes:
        for s in self.sections:
            if s.name == name:
                return data[s.offset : s.offset + s.size]
        raise KeyError(name)

    def symbol(self, data: bytes, name: str) -> tuple[int, int]:
        """(file offset, size) of a defined dynamic symbol."""
        dynsym = next(s for s in self.sections if s.name == ".dynsym")
        strtab = self.sections[dynsym.link]
        for i in range(dynsym.size // 24):
            st_name, _, _, shndx, value, size = struct.unpack_from(
                "<IBBHQQ", data, dynsym.offset + 24 * i
            )
            if shndx and _cstr(data, strtab.offset + st_name) == name:
                sec = self.sections[shndx]
                return value - sec.addr + sec.offset, size
        raise KeyError(name)


def _cstr(data: bytes, offset: int) -> str:
    return data[offset : data.index(b"\0", offset)].decode("ascii", "replace")


def read_elf(path: str | os.PathLike[str], data: bytes | None = None) -> Elf | None:
    """Parse ``path``; None if it is not an ELF64 little-endian file (or is truncated)."""
    try:
        if data is None:
            with open(path, "rb") as fh:
                if fh.read(6) != b"\x7fELF\x02\x01":
                    return None
                fh.seek(0)
                data = fh.read()
        elif not data.startswith(b"\x7fELF\x02\x01"):
            return None
        elf = Elf(Path(path))
        phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 0x36)
        for i in range(phnum):
            p_type, _, p_offset, p_vaddr, _, _, _, p_align = struct.unpack_from(
                "<IIQQQQQQ", data, phoff + i * phentsize
            )
            if p_type == PT_LOAD:
                elf.loads.append((p_offset, p_vaddr, p_align))
        raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        names_at = raw[shstrndx][4] if shnum else 0
        for name, s_type, _, addr, offset, size, link, *_ in raw:
            elf.sections.append(
                Section(
                    _cstr(data, names_at + name),
                    s_type,
                    addr,
                    offset,
                    size if s_type != SHT_NOBITS else 0,
                    link,
                )
            )
        for s in elf.sections:
            if s.type != SHT_DYNAMIC:
                continue
            strtab = elf.sections[s.link]
            for i in range(s.size // 16):
                tag, val = struct.unpack_from("<qQ", data, s.offset + 16 * i)
                if tag == DT_NEEDED:
                    elf.needed.append(_cstr(data, strtab.offset + val))
                elif tag == DT_SONAME:
                    elf.soname = _cstr(data, strtab.offset + val)
                elif tag == 0:
                    break
        return elf
    except (OSError, struct.error, ValueError, IndexError):
        return None


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# ----------------------------------------------------------------------------- stripping


def strip_debug_info(
    binaries: Iterable[TocEntry], workdir: Path, log: Callable[[str], None] = print
) -> list[TocEntry]:
    """Return ``binaries`` with stripped copies (in ``workdir``) of files that carry debug info.

    A stripped copy is used only if ``strip`` succeeds, the copy parses, its ``DT_NEEDED``
    list is unchanged and its loadable segments are still congruent (see the module doc).
    """
    strip = shutil.which("strip")
    if strip is None:
        log("bundle_trim: no 'strip' (binutils) on PATH; binaries are not stripped")
        return list(binaries)
    out: list[TocEntry] = []
    saved, n_stripped, refused = 0, 0, []
    for dest, src, typecode in binaries:
        elf = read_elf(src) if typecode in ("BINARY", "EXTENSION") else None
        if elf is None or elf.debug_bytes < 4096:
            out.append((dest, src, typecode))
            continue
        target = workdir / "stripped" / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [strip, "--strip-unneeded", "-o", str(target), src], capture_output=True, text=True
        )
        new = read_elf(target) if proc.returncode == 0 else None
        if new is None or new.needed != elf.needed or not new.segments_congruent():
            refused.append(dest)
            out.append((dest, src, typecode))
            continue
        shutil.copymode(src, target)
        saved += os.path.getsize(src) - os.path.getsize(target)
        n_stripped += 1
        out.append((dest, str(target), typecode))
    log(
        f"bundle_trim: stripped {n_stripped} binaries, {_mib(saved)} saved"
        + (
            f"; kept unstripped (strip would break their layout): {', '.join(refused)}"
            if refused
            else ""
        )
    )
    return out


# ----------------------------------------------------------------------------- pruning


def _prunable(dest: str, typecode: str) -> bool:
    """Plain shared libraries PyInstaller collected as dependencies (not modules/plugins)."""
    if typecode != "BINARY":
        return False
    name = dest.rsplit("/", 1)[-1]
    if name.startswith("libpython"):  # loaded by the bootloader, needed by nobody
        return False
    return "/" not in dest or dest.startswith("PySide6/Qt/lib/")


def prune_unreferenced(
    binaries: Iterable[TocEntry], log: Callable[[str], None] = print
) -> list[TocEntry]:
    """Drop prunable libraries outside the ``DT_NEEDED`` closure of the other binaries."""
    entries = list(binaries)
    by_dest = {dest: (src, tc) for dest, src, tc in entries}
    elves: dict[str, Elf] = {}
    provides: dict[str, str] = {}  # library name / soname -> dest of the real file
    for dest, src, tc in entries:
        if tc in ("BINARY", "EXTENSION"):
            elf = read_elf(src)
            if elf is None:  # not an ELF bundle (Windows/macOS): leave it alone
                log(f"bundle_trim: {src} is not ELF64; no library pruning")
                return entries
            elves[dest] = elf
            provides.setdefault(dest.rsplit("/", 1)[-1], dest)
            if elf.soname:
                provides.setdefault(elf.soname, dest)
    for dest, src, tc in entries:  # PyInstaller's top-level symlinks to PySide6/Qt/lib/...
        if tc == "SYMLINK":
            target = os.path.normpath(os.path.join(os.path.dirname(dest), src))
            if target in elves:
                provides.setdefault(dest.rsplit("/", 1)[-1], target)
    roots = [d for d, (_, tc) in by_dest.items() if d in elves and not _prunable(d, tc)]
    reached: set[str] = set()
    stack = list(roots)
    while stack:
        dest = stack.pop()
        if dest in reached:
            continue
        reached.add(dest)
        stack += [provides[n] for n in elves[dest].needed if n in provides]
    dropped = {d for d in elves if d not in reached}
    out, dropped_bytes = [], 0
    for dest, src, tc in entries:
        if dest in dropped:
            dropped_bytes += os.path.getsize(src)
            continue
        if (
            tc == "SYMLINK"
            and os.path.normpath(os.path.join(os.path.dirname(dest), src)) in dropped
        ):
            continue
        out.append((dest, src, tc))
    log(
        f"bundle_trim: dropped {len(dropped)} libraries no kept binary links to "
        f"({_mib(dropped_bytes)}): {', '.join(sorted(d.rsplit('/', 1)[-1] for d in dropped))}"
    )
    return out


# ----------------------------------------------------------------------------- ICU data

#: Item folders/kinds of the ICU data package that are dropped (see the module doc).
ICU_DROP_DIRS = ("brkitr/", "curr/", "lang/", "rbnf/", "region/", "translit/", "unit/", "zone/")
ICU_DROP_SUFFIXES = (".cnv",)
#: Kept whatever the rules above say: the alias table (converter name lookups stay valid).
ICU_KEEP = ("cnvalias.icu",)


def icu_keep_item(name: str) -> bool:
    """``name`` like ``icudt73l/coll/de.res``: keep it in the filtered data?"""
    rel = name.split("/", 1)[1] if "/" in name else name
    if rel in ICU_KEEP:
        return True
    return not rel.startswith(ICU_DROP_DIRS) and not rel.endswith(ICU_DROP_SUFFIXES)


def _parse_icu_common(blob: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Split an ICU common data package ("CmnD") into its header and (name, bytes) items."""
    header_size, magic1, magic2 = struct.unpack_from("<HBB", blob, 0)
    if (magic1, magic2) != (0xDA, 0x27) or blob[12:16] != b"CmnD" or blob[8] != 0:
        raise ValueError("not a little-endian ICU common data package")
    count = struct.unpack_from("<I", blob, header_size)[0]
    toc = [struct.unpack_from("<II", blob, header_size + 4 + 8 * i) for i in range(count)]
    items = []
    for i, (name_off, data_off) in enumerate(toc):
        end = toc[i + 1][1] if i + 1 < count else len(blob) - header_size
        items.append(
            (_cstr(blob, header_size + name_off), blob[header_size + data_off : header_size + end])
        )
    return blob[:header_size], items


def _build_icu_common(header: bytes, items: list[tuple[str, bytes]]) -> bytes:
    """The inverse of ``_parse_icu_common`` (items kept in order, 16-byte aligned)."""
    hs, n = len(header), len(items)
    names = b"".join(name.encode("ascii") + b"\0" for name, _ in items)
    data_start = 4 + 8 * n + len(names)
    data_start += -(hs + data_start) % 16
    toc, body, name_off = [], bytearray(), 4 + 8 * n
    for name, item in items:
        toc.append(struct.pack("<II", name_off, data_start + len(body)))
        name_off += len(name) + 1
        body += item + b"\0" * (-(len(item)) % 16)
    out = bytearray(header) + struct.pack("<I", n) + b"".join(toc) + names
    out += b"\0" * (hs + data_start - len(out))
    return bytes(out + body)


def filter_icu_data(
    src: str,
    workdir: Path,
    keep: Callable[[str], bool] = icu_keep_item,
    log: Callable[[str], None] = print,
) -> str:
    """Path of a rebuilt ``libicudata.so.NN`` with only the kept items, or ``src`` on failure."""
    try:
        data = Path(src).read_bytes()
        elf = read_elf(src, data)
        if elf is None or not elf.soname:
            return src
        m = re.fullmatch(r"libicudata\.so\.(\d+)", elf.soname)
        if not m:
            return src
        symbol = f"icudt{m.group(1)}_dat"
        offset, size = elf.symbol(data, symbol)
        header, items = _parse_icu_common(data[offset : offset + size])
        kept = [(name, item) for name, item in items if keep(name)]
        if not any("/coll/" in name for name, _ in kept):
            raise ValueError("the filter would drop the collation data")
        out_dir = workdir / "icu"
        out_dir.mkdir(parents=True, exist_ok=True)
        dat = out_dir / f"icudt{m.group(1)}l.dat"
        dat.write_bytes(_build_icu_common(header, kept))
        asm = out_dir / "icudata.s"
        asm.write_text(
            f".section .rodata\n.globl {symbol}\n.type {symbol}, @object\n.balign 16\n"
            f'{symbol}:\n.incbin "{dat}"\n.size {symbol}, . - {symbol}\n'
            '.section .note.GNU-stack,"",@progbits\n',
            encoding="ascii",
        )
        obj, lib = out_dir / "icudata.o", out_dir / elf.soname
        subprocess.run(["as", "-o", str(obj), str(asm)], check=True, capture_output=True)
        subprocess.run(
            ["ld", "-shared", "-z", "noexecstack", "-soname", elf.soname, "-o", str(lib), str(obj)],
            check=True,
            capture_output=True,
        )
        new = read_elf(lib)
        if (
            new is None
            or new.soname != elf.soname
            or new.symbol(lib.read_bytes(), symbol)[1] != dat.stat().st_size
        ):
            raise ValueError("the rebuilt library does not export the data")
    except (OSError, ValueError, KeyError, StopIteration, subprocess.CalledProcessError) as exc:
        log(f"bundle_trim: ICU data kept in full ({type(exc).__name__}: {exc})")
        return src
    log(
        f"bundle_trim: ICU data {_mib(size)} -> {_mib(dat.stat().st_size)} "
        f"({len(kept)} of {len(items)} items)"
    )
    return str(lib)
