"""The triage headline and the numbers a person reads (issue 15, point 2)."""

from __future__ import annotations

from typing import ClassVar

import pytest

from lunglens.inference import format_threshold, headline, slice_numbers, triage_headline
from lunglens.inference.wording import comparison_digits


def test_headline_states_the_decision_not_a_class() -> None:
    assert (
        triage_headline(True, 0.327, 0.1543)
        == "Flagged for review - COVID-19 not ruled out (P 0.327 >= threshold 0.154)"
    )
    assert triage_headline(False, 0.08, 0.1543) == "Not flagged for COVID-19 (P 0.080 < 0.154)"
    assert "covid" not in triage_headline(True, 0.2, 0.15)  # the label's id never shows
    assert triage_headline(True, 0.9, 0.5, "pneumonia").startswith(
        "Flagged for review - pneumonia not ruled out"
    )


@pytest.mark.parametrize(
    ("prob", "threshold", "text"),
    [
        (
            0.1536,
            0.1543,
            "Not flagged for COVID-19 (P 0.1536 < 0.1543)",
        ),  # 0.154 < 0.154 would misread
        (0.15429, 0.1543, "Not flagged for COVID-19 (P 0.15429 < 0.15430)"),
        (
            0.1543,
            0.1543,
            "Flagged for review - COVID-19 not ruled out (P 0.154 >= threshold 0.154)",
        ),
        (
            0.15431,
            0.1543,
            "Flagged for review - COVID-19 not ruled out (P 0.154 >= threshold 0.154)",
        ),
    ],
)
def test_numbers_never_contradict_the_decision(prob: float, threshold: float, text: str) -> None:
    assert triage_headline(prob >= threshold, prob, threshold) == text


def test_threshold_precision_and_slice_numbers() -> None:
    assert format_threshold(0.15430094301700592) == "0.154"
    assert comparison_digits(0.5, 0.1543) == 3
    assert slice_numbers([0, 4, 2]) == [1, 5, 3]


def test_headline_of_a_result() -> None:
    class R:
        flagged, positive_prob, threshold, positive_label = False, 0.01, 0.2031, "covid"
        labels, probs = ("covid", "non-covid"), {"covid": 0.01, "non-covid": 0.99}

    assert headline(R()) == "Not flagged for COVID-19 (P 0.010 < 0.203)"


def test_a_three_class_result_names_what_it_rates_most_probable() -> None:
    """A bare "Not flagged" over a 97% pneumonia reads as a normal X-ray (the app trial)."""

    class R:
        flagged, positive_prob, threshold, positive_label = False, 0.0104, 0.2401, "covid"
        labels = ("covid", "normal", "pneumonia")
        probs: ClassVar = {"covid": 0.0104, "normal": 0.0206, "pneumonia": 0.969}

    assert headline(R()) == (
        "Not flagged for COVID-19 (P 0.010 < 0.240); most probable: pneumonia (P 0.969)"
    )
    R.flagged, R.positive_prob = True, 0.5
    assert headline(R()) == (
        "Flagged for review - COVID-19 not ruled out (P 0.500 >= threshold 0.240)"
    )
    # under a threshold above 1/3 COVID itself may be the most probable class: not named
    R.flagged, R.threshold, R.positive_prob = False, 0.5, 0.45
    R.probs = {"covid": 0.45, "normal": 0.30, "pneumonia": 0.25}
    assert headline(R()) == "Not flagged for COVID-19 (P 0.450 < 0.500)"


def test_counted_agrees_in_number() -> None:
    from lunglens.inference.wording import counted

    assert counted(1, "file") == "1 file" and counted(2, "file") == "2 files"
    assert counted(0, "error") == "0 errors" and counted(1, "series", "series") == "1 series"
    assert counted(3, "analysis", "analyses") == "3 analyses"
