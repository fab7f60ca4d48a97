"""Local validation: how the installed models triage a clinic's own labelled scans.

The model cards describe public data sets; a hospital's scanners, protocols and patients are
not in them. Before relying on the triage a site scores a labelled folder of its own
(``lunglens score FOLDER --out results.csv``) and compares the results file with a labels file
(``lunglens validate results.csv --labels labels.csv``): sensitivity, specificity, predictive
values and accuracy *at the shipped threshold*, i.e. of the decisions the app makes, each with a
95% Wilson interval, and the ROC AUC with a Hanley-McNeil interval. When the labels file says
whose each scan is (a ``patient`` column), the intervals count patients: several slices or
series of one patient are not independent, and per-scan intervals would be too narrow
(clustered Wilson and Obuchowski's AUC variance, ``lunglens.report.statistics``). The contract
is in ``docs/local-validation.md``.

Built from the results CSV rather than by scoring again, so it measures exactly the rows the
clinic will read (model, version and hash included) and a resumed run counts once.
Scans that were not scored (unreadable, refused as not a chest scan) are counted apart, never
as negatives: the app gave them no decision, so a reader must look at them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lunglens import DISCLAIMER
from lunglens.errors import ValidationInputError
from lunglens.inference.wording import condition_name, format_threshold
from lunglens.models.seal import plain_json
from lunglens.report.statistics import (
    auc_ci,
    choose_threshold,
    clustered_auc_ci,
    clustered_wilson_ci,
    roc_auc,
    wilson_ci,
)
from lunglens.report.validation_inputs import (
    POSITIVE,
    RESULTS_HINT,
    read_labels,
    read_labels_and_patients,
    read_results,
    require_columns,
    scan_key,
)

__all__ = ["Validation", "read_labels", "summary_lines", "validate", "validate_files"]

#: Sensitivity the shipped thresholds were chosen for (model cards, ``threshold_rule``).
TARGET_SENSITIVITY = 0.95
_EXAMPLES = 5  # keys named in a summary line before "..."
#: Fewer scans of a class than this: no AUC interval (Hanley-McNeil is meant for larger sets)
#: and no local threshold (with 20 positives, sensitivity 0.95 still allows one miss).
MIN_PER_CLASS_AUC_CI = 10
MIN_POSITIVES_THRESHOLD = 20
#: Fewer patients than this: the clustered AUC interval covers clearly less than 95% (about 82%
#: at 8-10 patients in simulation, docs/local-validation.md), which the summary says.
FEW_PATIENTS = 20
#: half the last decimal of the threshold cell (3 decimals) and of the P cell (6), and float
#: slack: a P of exactly the threshold 0.0945 is written 0.094500 next to a threshold 0.095
_ROUNDING = 0.0005 + 0.0000005 + 1e-9


@dataclass
class Proportion:
    """``k`` of ``n`` with its 95% Wilson interval."""

    k: int
    n: int
    value: float
    low: float
    high: float

    @classmethod
    def of(cls, k: int, n: int) -> Proportion:
        lo, hi = wilson_ci(k, n)
        return cls(k, n, k / n if n else float("nan"), lo, hi)

    @classmethod
    def by_patient(cls, hits: np.ndarray, counted: np.ndarray, patient: np.ndarray) -> Proportion:
        """``hits`` of the ``counted`` scans, the interval by patient (``patient[i]``: the
        index of scan ``i``'s patient): :func:`clustered_wilson_ci`."""
        size = int(patient.max()) + 1 if len(patient) else 0
        k_c = np.bincount(patient, weights=hits & counted, minlength=size)
        n_c = np.bincount(patient, weights=counted, minlength=size)
        k, n = int(k_c.sum()), int(n_c.sum())
        lo, hi = clustered_wilson_ci(k_c, n_c)
        return cls(k, n, k / n if n else float("nan"), lo, hi)

    def text(self) -> str:
        if not self.n:
            return "not defined (none)"
        return f"{self.value:.1%} ({self.k}/{self.n}; 95% CI {self.low:.1%}-{self.high:.1%})"


@dataclass
class ModelValidation:
    """One model's rows of the results file against the labels.

    ``by_label`` counts, per true label, scans flagged and not flagged; ``not_scored`` per
    true label the error rows (no decision). ``local_threshold`` is the largest threshold that
    would keep sensitivity >= 0.95 on these scans (``None`` under ``MIN_POSITIVES_THRESHOLD``
    positives): information for the site, not a setting. ``auc_low``/``auc_high`` are NaN under
    ``MIN_PER_CLASS_AUC_CI`` scans of a class, at a perfect separation, or by patient with
    fewer than two patients of a class (no interval). ``n_patients`` is the number of patients
    the scored scans are of when the labels file names a patient for at least one of them
    (then every interval is by patient, a scan without one a patient of its own), else
    ``None`` (intervals by scan).
    """

    model: str
    version: str
    sha256: str
    positive: str
    thresholds: list[float]
    n: int
    sensitivity: Proportion
    specificity: Proportion
    ppv: Proportion
    npv: Proportion
    accuracy: Proportion
    auc: float
    auc_low: float
    auc_high: float
    local_threshold: float | None
    n_positive: int = 0
    n_negative: int = 0
    n_patients: int | None = None
    by_label: dict[str, dict[str, int]] = field(default_factory=dict)
    not_scored: dict[str, int] = field(default_factory=dict)


@dataclass
class Validation:
    """The whole comparison: per model, and the rows that could not be compared."""

    positive: str
    models: list[ModelValidation]
    #: error rows no model was chosen for (automatic mode), per true label
    not_scored_unrouted: dict[str, int]
    not_scored: list[str]  #: every labelled scan without a decision (error rows): read them
    unlabelled: list[str]  #: results rows without a label (not counted)
    not_in_results: list[str]  #: labelled scans the results file has no row for

    def to_dict(self) -> dict:
        """JSON-ready (``NaN`` becomes ``None``: :func:`lunglens.models.seal.plain_json`)."""
        return plain_json(asdict(self) | {"disclaimer": DISCLAIMER})


def _model_labels(rows: Sequence[Mapping[str, str]]) -> set[str]:
    """Every label the results file has a probability column for (every row has the header's
    columns)."""
    return {c[2:] for c in rows[0] if c.startswith("p_")}


def validate(
    rows: Sequence[Mapping[str, str]],
    labels: Mapping[str, str],
    patients: Mapping[str, str] | None = None,
) -> Validation:
    """Compare results rows (:func:`lunglens.batch.read_rows`) with labels (:func:`read_labels`).

    Each ``ok`` row's decision is its ``flagged`` cell (what the app showed) and its score the
    ``p_covid`` cell; rows are grouped by model name, version and SHA-256. Only the labels of
    scans the results file holds are checked, so one labels file serves every run of a site.
    With ``patients`` (scan key -> patient; a scan not in it is a patient of its own) the
    intervals are by patient.

    Raises
    ------
    ValidationInputError
        The rows are not a results file's, a matched scan's label is not one of the models'
        labels, a cell cannot be read, or no results row has a label.
    """
    require_columns(rows)
    labels = {scan_key(k): v for k, v in labels.items()}
    by_scan = None if patients is None else {scan_key(k): v for k, v in patients.items()}
    known = _model_labels(rows)
    groups: dict[tuple[str, str, str], list[tuple[Mapping[str, str], str]]] = {}
    unrouted: Counter[str] = Counter()
    unlabelled: list[str] = []
    not_scored: list[str] = []
    seen: set[str] = set()
    for row in rows:
        key = scan_key(row["path"])
        if key in seen:
            continue  # a resumed file's duplicate: the first complete row counts
        seen.add(key)
        if key not in labels:
            unlabelled.append(row["path"])
            continue
        if labels[key] not in known and row["status"] == "ok":
            # an error row's label is not checked: a scan refused by a model of the other
            # modality (--model NAME) has a label that model lacks, and gets no decision
            raise ValidationInputError(
                None,
                f"The labels file gives {row['path']!r} the label {labels[key]!r}, which no "
                f"model of the results file has (its labels: {', '.join(sorted(known))})",
                f"Use those names; any label but {POSITIVE!r} counts as negative.",
            )
        ident = (row["model"], row["model_version"], row["model_sha256"])
        if row["status"] != "ok":
            not_scored.append(row["path"])
        if not ident[0] and row["status"] != "ok":
            unrouted[labels[key]] += 1
            continue
        groups.setdefault(ident, []).append((row, labels[key]))
    if not groups and not unrouted:
        raise ValidationInputError(
            None,
            "No scan of the results file is in the labels file (results: "
            f"{_some([r['path'] for r in rows], 2)}; labels: {_some(sorted(labels), 2)})",
            "The labels' 'path' must be the results file's 'path' as written (relative stays "
            "relative; 'folder#SeriesInstanceUID' for a series).",
        )
    return Validation(
        positive=POSITIVE,
        models=[_one_model(ident, pairs, by_scan) for ident, pairs in groups.items()],
        not_scored_unrouted=dict(unrouted),
        not_scored=not_scored,
        unlabelled=unlabelled,
        not_in_results=sorted(k for k in labels if k not in seen),
    )


def _decision(row: Mapping[str, str]) -> tuple[bool, float, float]:
    """``(flagged, p_covid, threshold)`` of an ``ok`` row. ``flagged`` in any case (a
    spreadsheet re-saves ``true`` as ``TRUE``); anything else is refused, never read as
    "not flagged"."""
    flag = row["flagged"].strip().lower()
    try:
        if flag not in ("true", "false"):
            raise ValueError(f"flagged is {row['flagged']!r}, not true or false")
        p, thr = float(row[f"p_{POSITIVE}"]), float(row["threshold"])
    except ValueError as exc:
        raise ValidationInputError(
            row["path"], f"its results row cannot be read ({exc})", RESULTS_HINT
        ) from exc
    flagged = flag == "true"
    # the cells are rounded (P to 6 decimals, the threshold to 3): only a contradiction beyond
    # that rounding is one the app cannot have written
    if abs(p - thr) > _ROUNDING and flagged != (p >= thr):
        raise ValidationInputError(
            row["path"],
            f"its results row says flagged {row['flagged']} with P {row[f'p_{POSITIVE}']} and "
            f"threshold {row['threshold']}: the app never writes that, so the file was changed "
            "after scoring",
            RESULTS_HINT,
        )
    return flagged, p, thr


def _local_threshold(y: np.ndarray, p: np.ndarray, thresholds: set[float]) -> float | None:
    """The largest threshold keeping sensitivity >= 95% on these scans, rounded *down* to the
    3 decimals it is shown with (rounding up could lose a positive); ``None`` with too few
    positives, or when single images and series (two decision rules) are mixed."""
    if int(y.sum()) < MIN_POSITIVES_THRESHOLD or len(thresholds) != 1:
        return None
    return math.floor(choose_threshold(y.astype(int), p, TARGET_SENSITIVITY) * 1000) / 1000


def _one_model(
    ident: tuple[str, str, str],
    pairs: list[tuple[Mapping[str, str], str]],
    patients: Mapping[str, str] | None = None,
) -> ModelValidation:
    not_scored: Counter[str] = Counter()
    by_label: dict[str, dict[str, int]] = {}
    y, flagged, score, thresholds = [], [], [], set()
    whose: list[tuple[str, str]] = []  # (kind, id): a named patient, or a scan of its own
    for row, label in pairs:
        if row["status"] != "ok":
            not_scored[label] += 1
            continue
        f, p, thr = _decision(row)
        key = scan_key(row["path"])
        named = (patients or {}).get(key)
        whose.append(("patient", named) if named else ("scan", key))
        y.append(label == POSITIVE)
        flagged.append(f)
        score.append(p)
        thresholds.add(thr)
        counts = by_label.setdefault(label, {"flagged": 0, "not_flagged": 0})
        counts["flagged" if f else "not_flagged"] += 1
    yt, ft, st = np.array(y, bool), np.array(flagged, bool), np.array(score, float)
    auc = roc_auc(yt.astype(int), st)
    n_pos, n_neg = int(yt.sum()), int((~yt).sum())
    index: dict[tuple[str, str], int] = {}
    ids = np.array([index.setdefault(w, len(index)) for w in whose], int)
    # by patient only where the labels name a patient for some scan of this model's rows (a
    # site-wide labels file may name them for other runs only)
    by_patient = any(kind == "patient" for kind, _ in whose)
    lo, hi = float("nan"), float("nan")
    if min(n_pos, n_neg) >= MIN_PER_CLASS_AUC_CI and 0.0 < auc < 1.0:
        if by_patient:
            lo, hi = clustered_auc_ci(yt.astype(int), st, ids)
        else:
            lo, hi = auc_ci(auc, n_pos, n_neg)
    rates = _rates(yt, ft, ids if by_patient else None)
    return ModelValidation(
        model=ident[0],
        version=ident[1],
        sha256=ident[2],
        positive=POSITIVE,
        thresholds=sorted(thresholds),
        n=len(yt),
        n_positive=n_pos,
        n_negative=n_neg,
        n_patients=len(index) if by_patient else None,
        **rates,
        auc=auc,
        auc_low=lo,
        auc_high=hi,
        local_threshold=_local_threshold(yt, st, thresholds),
        by_label=by_label,
        not_scored=dict(not_scored),
    )


def _rates(y: np.ndarray, flagged: np.ndarray, patient: np.ndarray | None) -> dict[str, Proportion]:
    """Sensitivity, specificity, PPV, NPV and accuracy of the flags against the labels; by
    patient when ``patient`` gives each scan's patient index, else treating scans as
    independent."""
    correct = y == flagged
    parts = {  # (hits, scans counted)
        "sensitivity": (flagged, y),
        "specificity": (~flagged, ~y),
        "ppv": (y, flagged),
        "npv": (~y, ~flagged),
        "accuracy": (correct, np.ones_like(y)),
    }
    if patient is None:
        return {k: Proportion.of(int((h & c).sum()), int(c.sum())) for k, (h, c) in parts.items()}
    return {k: Proportion.by_patient(h, c, patient) for k, (h, c) in parts.items()}


def _some(keys: Sequence[str], n: int = _EXAMPLES) -> str:
    shown = ", ".join(keys[:n])
    return shown + (", ..." if len(keys) > n else "")


def _per_label(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{lab} {n}" for lab, n in sorted(counts.items()))


def _interval_basis(m: ModelValidation) -> str:
    """What the 95% intervals count: patients, when the labels file names them."""
    if m.n_patients is None:
        return (
            f"  95% intervals treat the {m.n} scans as independent (a 'patient' column in the "
            "labels file makes them count patients)"
        )
    few = (
        f"; with under {FEW_PATIENTS} patients the AUC's interval is too narrow"
        if m.n_patients < FEW_PATIENTS
        else ""
    )
    return (
        f"  95% intervals by patient: {m.n} scans of {m.n_patients} "
        f"patient{'s' if m.n_patients != 1 else ''} (scans of one patient are not "
        f"independent{few})"
    )


def summary_lines(v: Validation) -> list[str]:
    """What ``lunglens validate`` prints: per model, the triage decision against the labels."""
    cond = condition_name(v.positive)
    out = [DISCLAIMER, f"Positive: label {v.positive!r} ({cond}); every other label negative."]
    for m in v.models:
        thr = ", ".join(format_threshold(t) for t in m.thresholds) or "-"
        out += [
            "",
            f"{m.model} {m.version} (sha256 {m.sha256[:12]}): {m.n} labelled scans scored, "
            f"threshold {thr}",
            _interval_basis(m),
            f"  sensitivity  {m.sensitivity.text()}  ({cond} scans flagged for review)",
            f"  specificity  {m.specificity.text()}  (other scans not flagged)",
            f"  PPV          {m.ppv.text()}",
            f"  NPV          {m.npv.text()}",
            f"  accuracy     {m.accuracy.text()}  (the flag against the label, {cond} or not)",
        ]
        if m.n:
            out.append(
                f"  PPV and NPV hold for these scans, {m.n_positive / m.n:.0%} of them {cond}; "
                "they change with how common it is"
            )
        if math.isnan(m.auc):
            out.append(
                f"  ROC AUC      not defined ({m.n_positive} {cond} and {m.n_negative} other "
                "scans scored: it needs both)"
            )
        else:
            if not math.isnan(m.auc_low):
                ci = f"95% CI {m.auc_low:.3f}-{m.auc_high:.3f}"
            elif min(m.n_positive, m.n_negative) < MIN_PER_CLASS_AUC_CI:
                ci = f"no interval: under {MIN_PER_CLASS_AUC_CI} scans of a class"
            elif m.n_patients is not None and 0.0 < m.auc < 1.0:
                ci = "no interval: too few patients of a class (under 2) to estimate it"
            else:
                ci = "no interval: the scores separate the classes completely"
            out.append(f"  ROC AUC      {m.auc:.3f} ({ci})")
        for lab, c in sorted(m.by_label.items()):
            out.append(f"  true {lab}: {c['flagged']} flagged, {c['not_flagged']} not flagged")
        if m.not_scored:
            out.append(
                f"  not scored (no decision; read these yourself): {sum(m.not_scored.values())}"
                f" ({_per_label(m.not_scored)})"
            )
        if m.local_threshold is not None:
            out.append(
                f"  for information: on these same scans, sensitivity >= "
                f"{TARGET_SENSITIVITY:.0%} holds up to threshold "
                f"{format_threshold(m.local_threshold)} (the model's: {thr}). Chosen on the "
                "scans it is measured on, it is optimistic; it is not a setting, and the app "
                "always uses the model's threshold"
            )
    if v.not_scored_unrouted:
        out.append(
            "\nNot scored before a model was chosen (e.g. not a chest scan, unreadable): "
            f"{sum(v.not_scored_unrouted.values())} "
            f"({_per_label(v.not_scored_unrouted)})"
        )
    if v.not_scored:
        out.append(
            f"\nNo decision for {len(v.not_scored)} labelled scans (a person must read them): "
            f"{_some(v.not_scored)}"
        )
    if v.unlabelled:
        out.append(
            f"\nResults rows without a label (not counted): {len(v.unlabelled)}: "
            f"{_some(v.unlabelled)}"
        )
    if v.not_in_results:
        out.append(
            f"\nLabelled scans with no results row (not scored in this file): "
            f"{len(v.not_in_results)}: {_some(v.not_in_results)}"
        )
    return out


def validate_files(results: str | Path, labels: str | Path) -> Validation:
    """:func:`validate` on a results CSV and a labels CSV.

    Raises
    ------
    ValidationInputError
        Either file cannot be used (:func:`read_results`, :func:`read_labels`) or they do not
        fit together (:func:`validate`).
    """
    return validate(read_results(results), *read_labels_and_patients(labels))
