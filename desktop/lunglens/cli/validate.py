"""``lunglens validate RESULTS --labels LABELS``: the triage against a clinic's own labels."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lunglens.cli.common import EXIT_OK, AddCommand, UsageError


def write_json(path: Path, data: dict) -> None:
    """``data`` as JSON, whole or not at all (``results_csv.write_atomic``). ASCII with
    ``\\u`` escapes, so a file name that is not UTF-8 on disk (a lone surrogate in Python)
    is written too.

    Raises
    ------
    OutputError
        The file cannot be written (a missing folder, no permission, a full disk).
    """
    from lunglens.batch.results_csv import write_atomic
    from lunglens.errors import OutputError

    try:
        write_atomic(path, json.dumps(data, indent=2, ensure_ascii=True) + "\n")
    except OSError as exc:
        raise OutputError(path, f"the JSON file cannot be written: {exc.strerror or exc}") from exc


def cmd_validate(args: argparse.Namespace) -> int:
    """Print sensitivity, specificity and the rest per model; ``--json`` writes them too."""
    from lunglens.report.validation import summary_lines, validate_files

    if args.json:
        out = Path(args.json).resolve()
        if out in (Path(args.results).resolve(), Path(args.labels).resolve()):
            raise UsageError(f"--json {args.json} would overwrite an input file")
    result = validate_files(args.results, args.labels)
    for line in summary_lines(result):
        print(line)
    print(f"\n(validated {args.results} against {args.labels})")
    if args.json:
        write_json(Path(args.json), result.to_dict())
        print(f"written: {args.json}")
    return EXIT_OK


def add_parser(add: AddCommand) -> None:
    """Register ``validate``."""
    p = add(
        "validate",
        cmd_validate,
        "compare a results file with your own labels: sensitivity, specificity, AUC of the "
        "triage decisions (docs/local-validation.md)",
    )
    p.add_argument("results", help="results CSV written by 'lunglens score'")
    p.add_argument(
        "--labels",
        required=True,
        help="CSV with a header 'path,label': each scan's path as in the results file and its "
        "true label (a model label: covid, non-covid, normal, pneumonia)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
