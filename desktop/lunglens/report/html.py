"""``results.html``: a self-contained summary of a results CSV (opens offline, mails as one file).

Built from the CSV rather than from the run, so a resumed run's report covers every row.
"""

from __future__ import annotations

import html
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lunglens import DISCLAIMER, __version__
from lunglens.batch.results_csv import error_code, read_rows
from lunglens.inference.wording import counted, format_prob, format_threshold
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


#: How the report names rows of one slice (judged by the manifest ``threshold``) and of more
#: than one (judged by ``series_aggregation.threshold`` when the manifest has one), as
#: :func:`lunglens.inference.classify.result_from_probs` decides.
SINGLE, SERIES = "single images", "series"


@dataclass
class _Judged:
    """The rows of one model judged by one threshold: which kinds of scan they are, the
    threshold as written on them, its rule from the manifest, and their scores."""

    threshold: float
    rule: str
    kinds: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def name(self) -> str:
        """``single images``, ``series`` or ``single images and series`` (legend and text)."""
        return " and ".join(self.kinds)


def _kind(row: dict[str, str]) -> str:
    return SERIES if int(row.get("n_slices") or "1") > 1 else SINGLE


def _rule_of(kind: str, m: ModelInfo | None) -> tuple[float, str]:
    """The manifest's threshold and rule for ``kind`` (``nan`` and "" without the model)."""
    if m is None:
        return float("nan"), ""
    agg = m.spec.series_aggregation or {}
    if kind == SERIES and "threshold" in agg:
        return m.series_threshold, str(agg.get("rule", ""))
    return m.threshold, str(m.manifest.get("threshold_rule", ""))


def _judged(rows: list[dict[str, str]], m: ModelInfo | None, positive: str) -> list[_Judged]:
    """``rows`` grouped by the threshold each was judged by (its ``threshold`` cell).

    A CT model judges single images by its slice threshold and series by the series one, so
    one threshold for all of its rows would state the wrong cut for some of them.
    """
    groups: dict[str, _Judged] = {}
    for r in rows:
        kind = _kind(r)
        manifest_threshold, rule = _rule_of(kind, m)
        cell = r.get("threshold") or format_threshold(manifest_threshold)
        group = groups.setdefault(cell, _Judged(float(cell), rule))
        if kind not in group.kinds:
            group.kinds.append(kind)
        group.scores.append(float(r[f"p_{positive}"]))
    return list(groups.values())


def _model_rows(
    name: str, version: str, sha: str, rows: list[dict[str, str]], infos: dict[str, ModelInfo]
) -> tuple[list[str], list[str]]:
    """The summary-table rows of one model that scored rows of the file, and its histogram.

    The thresholds are the ones written on the rows (a series' own, see :func:`_judged`); the
    positive label and each threshold's rule come from the model passed by the caller when its
    hash matches the rows, else ``covid`` and no rule.
    """
    found = infos.get(name)
    m = found if found is not None and found.sha256 == sha else None
    positive = m.positive_label if m is not None else DEFAULT_POSITIVE
    arch = f" ({_esc(m.architecture)})" if m is not None else ""
    groups = _judged(rows, m, positive)
    lines = [
        f"{format_threshold(g.threshold)} on P({_esc(positive)}) for {_esc(g.name())} "
        f"({counted(len(g.scores), 'scan')})" + (f" - {_esc(g.rule)}" if g.rule else "")
        for g in groups
    ]
    table = [
        f"<tr><th>Model</th><td>{_esc(name)} {_esc(version)}{arch}, "
        f"{counted(len(rows), 'scan')}</td></tr>",
        f"<tr><th>Model SHA-256</th><td class='mono'>{_esc(sha)}</td></tr>",
        f"<tr><th>{'Threshold' if len(lines) == 1 else 'Thresholds'}</th>"
        f"<td>{'<br>'.join(lines)}</td></tr>",
    ]
    png = figure_png(score_histogram([(g.name(), g.scores, g.threshold) for g in groups], positive))
    hist = [
        f"<h3>{_esc(name)} {_esc(version)}</h3>",
        f"<img alt='score histogram' src='{data_uri(png)}'>",
    ]
    return table, hist


def _unused_models(unused: list[ModelInfo]) -> list[str]:
    """One table row naming the models of the run that scored no row of the file (in a CT-only
    automatic run, the X-ray model), so none is mistaken for one that judged scans."""
    if not unused:
        return []
    names = ", ".join(f"{_esc(m.name)} {_esc(m.version)} ({_esc(m.short_hash)})" for m in unused)
    return [f"<tr><th>Not used</th><td>{names}: scored no scan in this file</td></tr>"]


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

    Contains the disclaimer, every model that scored rows of the file (name, version, hash and
    each threshold its rows were judged by: single images and series may differ), a score
    histogram per model with a line per such threshold, the models of the run that scored no
    row (named as not used), outcome counts, the flagged scans ranked by probability with each
    row's triage headline, and the errors. Charts are embedded as base64 PNG, so the file has
    no external references.

    ``info`` (the model, or the models of an automatic run) supplies each model's positive
    label and threshold rules; rows of a model not given are read with the ``covid`` label.
    Thresholds are always the ones written on the rows. Slice numbers count from 1, as in the
    CSV.
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
    unused = [g for g in given if (g.name, g.version, g.sha256) not in used]
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
        *_unused_models(unused),
        f"<tr><th>Scans</th><td>{len(rows)} ({len(ok)} scored, {len(flagged)} flagged, "
        f"{counted(len(errors), 'error')})</td></tr>",
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
