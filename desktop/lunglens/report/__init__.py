"""Reports: the batch summary (``results.html``) and one-scan PDFs.

Both are imported lazily (they pull in matplotlib), so ``import lunglens.report`` stays cheap.
The audit log is :mod:`lunglens.audit`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["scan_pdf", "write_html_report"]


def __getattr__(name: str) -> Any:
    if name == "scan_pdf":
        from lunglens.report.pdf import scan_pdf

        return scan_pdf
    if name == "write_html_report":
        from lunglens.report.html import write_html_report

        return write_html_report
    raise AttributeError(name)
