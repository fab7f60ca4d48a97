"""Reports: the batch summary (``results.html``) and one-scan PDFs.

Both are imported lazily (they pull in matplotlib), so ``import lunglens.report`` stays cheap.
The audit log lives in :mod:`lunglens.audit`, below the batch runner that appends to it; its
functions are re-exported here, where the app looks up the user data folder.
"""

from __future__ import annotations

from typing import Any

from lunglens.audit import append_audit, audit_path, data_dir

__all__ = ["append_audit", "audit_path", "data_dir", "scan_pdf", "write_html_report"]


def __getattr__(name: str) -> Any:
    if name == "scan_pdf":
        from lunglens.report.pdf import scan_pdf

        return scan_pdf
    if name == "write_html_report":
        from lunglens.report.html import write_html_report

        return write_html_report
    raise AttributeError(name)
