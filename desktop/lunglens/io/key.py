"""The identity of a scoring unit or slice: a path, optionally with a part after ``#``.

Results files, ``--resume`` and the viewer name things by one string:

- a file: its path;
- a multi-file DICOM series: ``folder#SeriesInstanceUID`` (0020,000E);
- a frame of a multi-frame DICOM file: ``file#frame`` (frames count from 1).

File names may themselves contain ``#`` (the hostile-input corpus has some), so a string is
split only when the whole string is not an existing path. This module is the one place that
builds and splits these strings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Separates the path from the series UID or frame number.
SEPARATOR = "#"


@dataclass(frozen=True)
class SourceKey:
    """A path plus an optional part (series UID or 1-based frame number).

    Attributes
    ----------
    path
        The file or folder, as given (not resolved, so results keep the user's spelling).
    part
        ``None`` for a plain file; the SeriesInstanceUID for a series; the frame number
        (as text) for a frame of a multi-frame file.
    """

    path: str
    part: str | None = None

    @classmethod
    def parse(cls, text: str | os.PathLike[str]) -> SourceKey:
        """Split ``text`` into path and part.

        A string that names an existing file or folder is a path even when it contains ``#``;
        otherwise it is split at the last ``#``.
        """
        text = os.fspath(text)
        if SEPARATOR not in text or os.path.exists(text):
            return cls(text)
        path, part = text.rsplit(SEPARATOR, 1)
        return cls(path, part or None)

    def __str__(self) -> str:
        return self.path if self.part is None else f"{self.path}{SEPARATOR}{self.part}"

    @property
    def name(self) -> str:
        """The last component of the path (for titles and file-name stems)."""
        return Path(self.path).name or self.path

    @property
    def series_uid(self) -> str | None:
        """The part, when it can be a SeriesInstanceUID (not a placeholder such as ``(none)``)."""
        if self.part is None or self.part.startswith("("):
            return None
        return self.part
