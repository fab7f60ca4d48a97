"""Reports: the batch summary (``results.html``), one-scan PDFs and the audit log.

``scan_pdf`` is imported lazily (it pulls in the PDF backend), so ``import lunglens.report`` stays
cheap for the batch runner, which only needs the audit log.
"""

from __future__ import annotations

from typing import Any

from lunglens.report.audit import append_audit, audit_path, data_dir

__all__ = ["append_audit", "audit_path", "data_dir", "scan_pdf", "write_html_report"]


def __getattr__(name: str) -> Any:
    if name == "scan_pdf":
        from lunglens.report.pdf import scan_pdf

        return scan_pdf
    if name == "write_html_report":
        from lunglens.report.html import write_html_report

        return write_html_report
    raise AttributeError(name)
