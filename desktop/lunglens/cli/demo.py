"""``lunglens demo``: the bundled samples, in the app when a display exists, else as a table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from lunglens.cli.common import EXIT_ERRORS, EXIT_OK, AddCommand, choose_model, err
from lunglens.cli.desktop import qt_problem, run_gui

if TYPE_CHECKING:
    from lunglens.io import ScanSource

#: Columns of the text table.
HEADER = ("file", "known label", "modality", "model", "P(covid)", "result")


class _DemoRow(NamedTuple):
    cells: tuple[str, ...]
    failed: bool = False
    #: A plain image whose modality the image check inferred (marked ``*``).
    inferred: bool = False


def sample_labels(samples: Path) -> dict[str, str]:
    """``file name -> label`` from the table of ``resources/samples/LICENSE.md``.

    The table's first column is the file name in backticks and its third the label given by
    the source data set (``| `cxr-normal-....jpg` | chest X-ray | normal (No Finding) | ...``).
    """
    labels: dict[str, str] = {}
    try:
        text = (samples / "LICENSE.md").read_text(encoding="utf-8")
    except OSError:
        return labels
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[0].endswith("`"):
            labels[cells[0].strip("`")] = cells[2]
    return labels


def _demo_row(args: argparse.Namespace, src: ScanSource, known: dict[str, str]) -> _DemoRow:
    """The table row of ``src``.

    A plain image's modality comes from the image check (marked ``*``); a scan refused by the
    chest-image gate (the brain-CT sample) is the gate at work, not a failure.
    """
    from lunglens.errors import LungLensError, ModalityMismatch, NotChestImage
    from lunglens.inference import classify_scan, format_prob, require_chest
    from lunglens.io import SCORED_MODALITIES, SourceKey, load_source

    name = SourceKey.parse(src.key).name
    label = known.get(name, "?")
    try:
        scan = load_source(src)
        info = choose_model(args, scan, require_chest(scan, args.models_dir, features=False))
        res = classify_scan(scan, info, with_cam=False)
    except (NotChestImage, ModalityMismatch) as exc:  # the gate and routing at work
        return _DemoRow((name, label, "?", "-", "-", f"refused, no score: {exc.reason}"))
    except LungLensError as exc:
        return _DemoRow((name, label, "?", "-", "-", f"error: {exc.code}"), failed=True)
    modality, inferred = str(scan.modality), False
    if scan.modality not in SCORED_MODALITIES:  # plain image: routed by the image check
        modality, inferred = f"{info.modality}*", True
    model = f"{info.name} {info.version}"
    cells = (name, label, modality, model, format_prob(res.positive_prob), res.headline)
    return _DemoRow(cells, inferred=inferred)


def cmd_demo(args: argparse.Namespace) -> int:
    """Open the samples in the app, or print a table of their known labels and scores."""
    from lunglens import DISCLAIMER
    from lunglens.io import discover_sources
    from lunglens.models import resources_dir

    samples = resources_dir() / "samples"
    sources = discover_sources(samples, recursive=True)[0] if samples.is_dir() else []
    if not sources:
        err(f"no sample scans found in {samples} (set LUNGLENS_RESOURCES_DIR)")
        return EXIT_ERRORS
    if not args.no_gui:
        problem = qt_problem()
        if not problem:
            return run_gui([str(p) for s in sources for p in s.paths[:1]], problem)
        err(f"the desktop app cannot start: {problem}; printing the demo as text")
    known = sample_labels(samples)
    results = [_demo_row(args, src, known) for src in sources]
    rows = [r.cells for r in results]
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    for r in [HEADER, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if any(r.inferred for r in results):
        print("\n* plain image: modality inferred from the pixels by the modality check")
    print(
        "\nP(covid) = the model's probability of COVID-19 findings; known label = the sample's "
        f"label in its source data set (resources/samples/LICENSE.md). {DISCLAIMER}"
    )
    return EXIT_ERRORS if any(r.failed for r in results) else EXIT_OK


def add_parser(add: AddCommand) -> None:
    """Register ``demo``."""
    p = add("demo", cmd_demo, "score the bundled sample scans")
    p.add_argument("--no-gui", action="store_true", help="print a table even with a display")
    p.add_argument("--model", help="model for all samples (default: by modality)")
