"""``results.html``: a self-contained summary of a results CSV (opens offline, mails as one file).

Built from the CSV rather than from the run, so a resumed run's report covers every row.
"""

from __future__ import annotations

import html
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from lunglens import DISCLAIMER, __version__
from lunglens.batch.results_csv import read_rows
from lunglens.models.registry import ModelInfo
from lunglens.report.charts import count_bars, data_uri, figure_png, score_histogram

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;
text-align:left;font-size:.9em}th{background:#eee}.disclaimer{border:2px solid #c0392b;
padding:.6em;background:#fdf2f2;font-weight:bold}.mono{font-family:monospace}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def write_html_report(
    csv_path: str | os.PathLike[str],
    info: ModelInfo,
    out_html: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the summary report for ``csv_path``; default beside it (``x.csv`` -> ``x.html``).

    Contains the disclaimer, the model's name/version/hash, a score histogram with the
    threshold line, outcome counts, the flagged scans sorted by probability, and the errors.
    Charts are embedded as base64 PNG, so the file has no external references.
    """
    csv_path = Path(csv_path)
    out = Path(out_html) if out_html is not None else csv_path.with_suffix(".html")
    rows = read_rows(csv_path)
    pcol = f"p_{info.positive_label}"
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] != "ok"]
    flagged = sorted(
        (r for r in ok if r["flagged"] == "true"), key=lambda r: float(r[pcol]), reverse=True
    )
    counts = {"flagged": len(flagged), "not flagged": len(ok) - len(flagged), "error": len(errors)}
    hist = data_uri(
        figure_png(
            score_histogram([float(r[pcol]) for r in ok], info.threshold, info.positive_label)
        )
    )
    bars = data_uri(figure_png(count_bars(counts)))
    codes = Counter(r["error"].split(":", 1)[0] for r in errors)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>LungLens results - {_esc(csv_path.name)}</title><style>{_STYLE}</style>",
        "</head><body>",
        f"<h1>LungLens results</h1><p class='disclaimer'>{_esc(DISCLAIMER)}</p>",
        "<table>",
        f"<tr><th>Results file</th><td>{_esc(csv_path)}</td></tr>",
        f"<tr><th>Model</th><td>{_esc(info.name)} {_esc(info.version)} "
        f"({_esc(info.architecture)})</td></tr>",
        f"<tr><th>Model SHA-256</th><td class='mono'>{_esc(info.sha256)}</td></tr>",
        f"<tr><th>Threshold</th><td>{info.threshold:.3f} on p({_esc(info.positive_label)}) "
        f"- {_esc(info.manifest.get('threshold_rule', ''))}</td></tr>",
        f"<tr><th>Scans</th><td>{len(rows)} ({len(ok)} scored, {len(flagged)} flagged, "
        f"{len(errors)} errors)</td></tr>",
        f"<tr><th>Report made</th><td>{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} "
        f"by LungLens {_esc(__version__)}</td></tr></table>",
        f"<h2>Scores</h2><img alt='score histogram' src='{hist}'>",
        f"<h2>Outcomes</h2><img alt='outcome counts' src='{bars}'>",
        f"<h2>Flagged scans ({len(flagged)}), most suspicious first</h2>",
    ]
    if flagged:
        parts.append(
            f"<table><tr><th>#</th><th>p({_esc(info.positive_label)})</th>"
            "<th>scan</th><th>slices</th><th>most suspicious slices</th></tr>"
        )
        for i, r in enumerate(flagged, 1):
            parts.append(
                f"<tr><td>{i}</td><td>{float(r[pcol]):.3f}</td><td>{_esc(r['path'])}"
                f"</td><td>{_esc(r['n_slices'])}</td><td>{_esc(r['top_slices'])}"
                "</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>None.</p>")
    parts.append(f"<h2>Errors ({len(errors)})</h2>")
    if errors:
        parts.append(
            "<p>"
            + ", ".join(f"{_esc(c)}: {n}" for c, n in codes.most_common())
            + "</p><table><tr><th>scan</th><th>error</th></tr>"
        )
        parts += [f"<tr><td>{_esc(r['path'])}</td><td>{_esc(r['error'])}</td></tr>" for r in errors]
        parts.append("</table>")
    else:
        parts.append("<p>None.</p>")
    parts.append(f"<p class='disclaimer'>{_esc(DISCLAIMER)}</p></body></html>")
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
