"""The words and numbers a person reads about a triage result, in one place.

Every output (GUI, ``lunglens classify``/``demo``, the results CSV, the HTML summary and the PDF)
states the triage *decision*, never a class name: a model tuned for sensitivity flags scans whose
P(covid) is well under 0.5, so "covid" next to bars reading covid 33% / non-covid 67% invites a
misreading. The headline says what the flag means (COVID-19 is not ruled out, a clinician should
look first) and carries the comparison that produced it, so it can be checked at a glance:

* ``Flagged for review - COVID-19 not ruled out (P 0.327 >= threshold 0.154)``
* ``Not flagged for COVID-19 (P 0.080 < 0.154)``

The flag is about one condition, so a scan that is not flagged says which condition it is not
flagged for; a model with more than two classes adds the class it rates most probable instead
(``Not flagged for COVID-19 (P 0.010 < 0.240); most probable: pneumonia (P 0.969)``), since a
bare "Not flagged" over a 97% pneumonia reads as a normal X-ray.

Probabilities and thresholds are shown with the same precision (:data:`DECIMALS`), so the
comparison printed is the comparison made; when rounding would make a probability just under
the threshold look equal to it, both get more digits (:func:`comparison_digits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

#: Decimals of every probability and threshold a person reads.
DECIMALS = 3
#: First words of the headline of a flagged scan (also the start of the CSV ``prediction``).
FLAGGED_WORDS = "Flagged for review"
#: First words of the headline of a scan that is not flagged.
NOT_FLAGGED_WORDS = "Not flagged"
#: Colours of the headline wherever it is drawn (app, PDF): red when flagged; a neutral dark
#: blue, not green, when not flagged, which is no all-clear (a 97% pneumonia is not flagged for
#: COVID-19).
FLAGGED_COLOR, NOT_FLAGGED_COLOR = "#b00020", "#1f3a5f"
#: How the positive label of a model is named in sentences (labels are file-friendly ids).
CONDITION_NAMES = {"covid": "COVID-19"}


class _Decided(Protocol):
    flagged: bool
    positive_prob: float
    threshold: float
    positive_label: str
    labels: tuple[str, ...]
    probs: dict[str, float]


class _Counted(Protocol):
    n_slices: int
    unscored_slices: tuple[int, ...]


def format_threshold(threshold: float) -> str:
    """The operating threshold as shown everywhere (``0.154``)."""
    return f"{threshold:.{DECIMALS}f}"


def comparison_digits(prob: float, threshold: float) -> int:
    """Decimals that show ``prob`` and ``threshold`` so their order reads right.

    :data:`DECIMALS`, unless ``prob < threshold`` and both round to the same text (e.g.
    0.1536 and 0.154): then more digits (up to 8), so a "not flagged" line never prints
    ``P 0.154 < 0.154``. Rounding is monotone, so a flagged result always reads right.
    """
    digits = DECIMALS
    while prob < threshold and digits < 8 and f"{prob:.{digits}f}" == f"{threshold:.{digits}f}":
        digits += 1
    return digits


def format_prob(prob: float) -> str:
    """A probability as shown everywhere (``0.327``)."""
    return f"{prob:.{DECIMALS}f}"


def condition_name(positive_label: str) -> str:
    """``"covid"`` -> ``"COVID-19"``; other labels as they are."""
    return CONDITION_NAMES.get(positive_label, positive_label)


def decision_words(flagged: bool, positive_label: str = "covid") -> str:
    """The decision without numbers: ``Flagged for review - COVID-19 not ruled out``."""
    if flagged:
        return f"{FLAGGED_WORDS} - {condition_name(positive_label)} not ruled out"
    return f"{NOT_FLAGGED_WORDS} for {condition_name(positive_label)}"


def triage_headline(
    flagged: bool,
    positive_prob: float,
    threshold: float,
    positive_label: str = "covid",
    most_probable: tuple[str, float] | None = None,
) -> str:
    """The headline of a result (see the module docstring for its forms); ``most_probable``
    (label, probability) is added to a scan that is not flagged."""
    d = comparison_digits(positive_prob, threshold)
    p, t = f"{positive_prob:.{d}f}", f"{threshold:.{d}f}"
    if flagged:
        return f"{decision_words(True, positive_label)} (P {p} >= threshold {t})"
    text = f"{decision_words(False, positive_label)} (P {p} < {t})"
    if most_probable is not None:
        label, prob = most_probable
        text += f"; most probable: {label} (P {format_prob(prob)})"
    return text


def headline(result: _Decided) -> str:
    """:func:`triage_headline` of a :class:`~lunglens.inference.ScanResult`: the class the
    model rates most probable is named only for a model with more than two classes (for
    covid/non-covid it would repeat the decision), and never when that class is the positive
    one under its threshold (possible only with a threshold above 1/3)."""
    most_probable = None
    top = max(result.probs, key=lambda label: result.probs[label]) if result.probs else ""
    if not result.flagged and len(result.labels) > 2 and top != result.positive_label:
        most_probable = (top, result.probs[top])
    return triage_headline(
        result.flagged,
        result.positive_prob,
        result.threshold,
        result.positive_label,
        most_probable,
    )


def slice_numbers(indices: list[int] | tuple[int, ...]) -> list[int]:
    """0-based slice indices -> the 1-based numbers a person reads (slice 1 is the first)."""
    return [int(i) + 1 for i in indices]


def slice_count(result: _Counted) -> str:
    """``16`` or ``16 (4 scored)``: a scan's slices, and how many of them its score comes from
    when some were left out (:mod:`lunglens.inference.slice_filter`)."""
    kept = result.n_slices - len(result.unscored_slices)
    return f"{result.n_slices}" + (f" ({kept} scored)" if kept < result.n_slices else "")


def slice_ranges(indices: Sequence[int]) -> str:
    """0-based slice indices as the 1-based runs a person reads: ``[0, 1, 2, 5]`` ->
    ``"1-3, 6"`` (a series may leave out dozens of slices at each end)."""
    numbers = sorted(set(slice_numbers(tuple(indices))))
    runs: list[str] = []
    start = prev = None
    for n in [*numbers, None]:
        if n is not None and prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    return ", ".join(runs)


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun`` in agreement: ``1 file``, ``2 files``, ``0 errors`` (``plural``
    when adding ``s`` is wrong), so summaries never read "1 files ignored"."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"
