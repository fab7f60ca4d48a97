"""``results.html``: a self-contained summary of a results CSV (opens offline, mails as one file).

Built from the CSV rather than from the run, so a resumed run's report covers every row.
"""

from __future__ import annotations

import html
import os
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from lunglens import DISCLAIMER, __version__
from lunglens.batch.results_csv import error_code, read_rows
from lunglens.inference.wording import format_prob, format_threshold
from lunglens.models.registry import ModelInfo
from lunglens.report.charts import count_bars, data_uri, figure_png, score_histogram

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;
text-align:left;font-size:.9em}th{background:#eee}.disclaimer{border:2px solid #c0392b;
padding:.6em;background:#fdf2f2;font-weight:bold}.mono{font-family:monospace}
"""


#: Positive label assumed for rows of a model the caller did not pass (every shipped triage
#: model's positive label).
DEFAULT_POSITIVE = "covid"


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _positive_label(row: dict[str, str], infos: dict[str, ModelInfo]) -> str:
    info = infos.get(row.get("model", ""))
    return info.positive_label if info is not None else DEFAULT_POSITIVE


def _model_rows(
    name: str, version: str, sha: str, rows: list[dict[str, str]], infos: dict[str, ModelInfo]
) -> tuple[list[str], list[str]]:
    """The summary-table rows of one model of the file and its histogram (none without rows).

    The threshold and positive label come from the model passed by the caller when its hash
    matches the rows, else from the rows themselves (``covid`` and the ``threshold`` column).
    """
    found = infos.get(name)
    m = found if found is not None and found.sha256 == sha else None
    threshold = (
        m.threshold
        if m is not None
        else float(rows[0].get("threshold") or "nan")
        if rows
        else float("nan")
    )
    positive = m.positive_label if m is not None else DEFAULT_POSITIVE
    rule = m.manifest.get("threshold_rule", "") if m is not None else ""
    arch = f" ({_esc(m.architecture)})" if m is not None else ""
    table = [
        f"<tr><th>Model</th><td>{_esc(name)} {_esc(version)}{arch}, {len(rows)} scans</td></tr>",
        f"<tr><th>Model SHA-256</th><td class='mono'>{_esc(sha)}</td></tr>",
        f"<tr><th>Threshold</th><td>{format_threshold(threshold)} on "
        f"P({_esc(positive)}) - {_esc(rule)}</td></tr>",
    ]
    if not rows:
        return table, []
    png = figure_png(
        score_histogram([float(r[f"p_{positive}"]) for r in rows], threshold, positive)
    )
    hist = [
        f"<h3>{_esc(name)} {_esc(version)}</h3>",
        f"<img alt='score histogram' src='{data_uri(png)}'>",
    ]
    return table, hist


def _flagged_table(flagged: list[dict[str, str]], prob: Callable[[dict[str, str]], float]) -> str:
    """The flagged scans, most suspicious first (``flagged`` is sorted already)."""
    if not flagged:
        return "<p>None.</p>"
    parts = [
        "<table><tr><th>#</th><th>P</th><th>triage</th><th>scan</th><th>model</th>"
        "<th>slices</th><th>most suspicious slices (1 = first)</th></tr>"
    ]
    for i, r in enumerate(flagged, 1):
        parts.append(
            f"<tr><td>{i}</td><td>{format_prob(prob(r))}</td><td>{_esc(r['prediction'])}"
            f"</td><td>{_esc(r['path'])}</td><td>{_esc(r['model'])}</td>"
            f"<td>{_esc(r['n_slices'])}</td><td>{_esc(r['top_slices'])}</td></tr>"
        )
    parts.append("</table>")
    return "\n".join(parts)


def _errors_table(errors: list[dict[str, str]]) -> str:
    """The error rows, after a count per error code."""
    if not errors:
        return "<p>None.</p>"
    codes = Counter(error_code(r["error"]) for r in errors)
    parts = [
        "<p>"
        + ", ".join(f"{_esc(c)}: {n}" for c, n in codes.most_common())
        + "</p><table><tr><th>scan</th><th>error</th></tr>"
    ]
    parts += [f"<tr><td>{_esc(r['path'])}</td><td>{_esc(r['error'])}</td></tr>" for r in errors]
    parts.append("</table>")
    return "\n".join(parts)


def write_html_report(
    csv_path: str | os.PathLike[str],
    info: ModelInfo | Sequence[ModelInfo] = (),
    out_html: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the summary report for ``csv_path``; default beside it (``x.csv`` -> ``x.html``).

    Contains the disclaimer, every model of the file (name, version, hash and the threshold
    its rows were judged by), a score histogram per model with its threshold line, outcome
    counts, the flagged scans ranked by probability with each row's triage headline, and the
    errors. Charts are embedded as base64 PNG, so the file has no external references.

    ``info`` (the model, or the models of an automatic run) supplies each model's positive
    label and threshold rule; rows of a model not given are read with the ``covid`` label and
    the threshold written on the row. Slice numbers count from 1, as in the CSV.
    """
    csv_path = Path(csv_path)
    out = Path(out_html) if out_html is not None else csv_path.with_suffix(".html")
    given = [info] if isinstance(info, ModelInfo) else list(info)
    infos = {m.name: m for m in given}
    rows = read_rows(csv_path)
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] != "ok"]

    def prob(r: dict[str, str]) -> float:
        return float(r.get(f"p_{_positive_label(r, infos)}") or "nan")

    flagged = sorted((r for r in ok if r["flagged"] == "true"), key=prob, reverse=True)
    counts = {"flagged": len(flagged), "not flagged": len(ok) - len(flagged), "error": len(errors)}
    # One line and one histogram per (model, version, hash) found in the file, in file order.
    used: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for r in ok:
        used.setdefault((r["model"], r["model_version"], r["model_sha256"]), []).append(r)
    for g in given:  # a model of the run that scored nothing is still named
        used.setdefault((g.name, g.version, g.sha256), [])
    bars = data_uri(figure_png(count_bars(counts)))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>LungLens results - {_esc(csv_path.name)}</title><style>{_STYLE}</style>",
        "</head><body>",
        f"<h1>LungLens results</h1><p class='disclaimer'>{_esc(DISCLAIMER)}</p>",
        "<table>",
        f"<tr><th>Results file</th><td>{_esc(csv_path)}</td></tr>",
    ]
    hists: list[str] = []
    for (name, version, sha), model_rows in used.items():
        table, hist = _model_rows(name, version, sha, model_rows, infos)
        parts += table
        hists += hist
    parts += [
        f"<tr><th>Scans</th><td>{len(rows)} ({len(ok)} scored, {len(flagged)} flagged, "
        f"{len(errors)} errors)</td></tr>",
        f"<tr><th>Report made</th><td>{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} "
        f"by LungLens {_esc(__version__)}</td></tr></table>",
        "<h2>Scores</h2>",
        *hists,
        f"<h2>Outcomes</h2><img alt='outcome counts' src='{bars}'>",
        f"<h2>Flagged scans ({len(flagged)}), most suspicious first</h2>",
        _flagged_table(flagged, prob),
        f"<h2>Errors ({len(errors)})</h2>",
        _errors_table(errors),
        f"<p class='disclaimer'>{_esc(DISCLAIMER)}</p></body></html>",
    ]
    # A file name that is not UTF-8 (surrogateescape) shows its odd bytes as \xNN escapes.
    text = "\n".join(parts).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    out.write_text(text, encoding="utf-8")
    return out
