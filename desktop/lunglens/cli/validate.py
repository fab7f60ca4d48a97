"""``lunglens validate RESULTS --labels LABELS``: the triage against a clinic's own labels."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lunglens.cli.common import EXIT_OK, AddCommand


def cmd_validate(args: argparse.Namespace) -> int:
    """Print sensitivity, specificity and the rest per model; ``--json`` writes them too."""
    from lunglens.report.validation import summary_lines, validate_files

    result = validate_files(args.results, args.labels, args.positive)
    print(f"Local validation of {args.results} against {args.labels}")
    for line in summary_lines(result):
        print(line)
    if args.json:
        Path(args.json).write_text(
            json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        print(f"\nwritten: {args.json}")
    return EXIT_OK


def add_parser(add: AddCommand) -> None:
    """Register ``validate``."""
    p = add(
        "validate",
        cmd_validate,
        "compare a results file with your own labels: sensitivity, specificity, AUC at the "
        "shipped threshold (docs/local-validation.md)",
    )
    p.add_argument("results", help="results CSV written by 'lunglens score'")
    p.add_argument(
        "--labels",
        required=True,
        help="CSV with a header 'path,label': each scan's path as in the results file and its "
        "true label (a model label, e.g. covid, non-covid, normal, pneumonia)",
    )
    p.add_argument(
        "--positive", default="covid", help="the label the triage flags (default: covid)"
    )
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
