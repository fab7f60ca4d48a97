"""What every command shares: exit codes, the help epilog, usage errors, messages, model choice.

Heavy modules (numpy, onnxruntime, pydicom) are imported inside the functions that need them, so
``lunglens --help`` starts fast on a clinic laptop.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lunglens import AUTO_MODEL

if TYPE_CHECKING:
    from lunglens.inference.gate import GateVerdict
    from lunglens.io.scan import Scan
    from lunglens.models.registry import ModelInfo

AUTO = AUTO_MODEL  #: ``--model auto``: each scan is scored by its modality's default model.

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_MODEL = 4
EXIT_CANCELLED = 130
#: ``score`` stopped by SIGTERM (128 + 15, the shell's code for it), after a clean stop
EXIT_TERMINATED = 143

EPILOG = """exit codes:
  0    success
  1    score: some scans errored (see their rows); any command: disk full or unexpected error
  2    usage error (bad option, --resume with --overwrite, results file exists without
       --resume or --overwrite, resume conflict, results file in use by another run;
       validate: a labels or results file that cannot be used)
  3    classify: the input cannot be read as a scan, is not a chest scan, is of the
       other modality than the --model named, or (--model auto) is a plain image whose
       family the pixels cannot tell (no score; "refused: <reason>" is printed)
  4    model refused (integrity check failed) or not found
  130  cancelled with Ctrl-C (score: rows so far are kept; rerun with --resume)
  143  score stopped by SIGTERM (POSIX): rows in hand written, lock released; --resume

Triage aid only - not a diagnosis. Results must be reviewed by a qualified clinician.
"""

#: A command's entry: the parsed arguments in, the exit code out.
Command = Callable[[argparse.Namespace], int]
#: ``add(name, command, help)``: registers a subcommand and returns its parser (each command
#: module's ``add_parser`` receives it from :func:`lunglens.cli.parser.build_parser`).
AddCommand = Callable[[str, Command, str], argparse.ArgumentParser]


class UsageError(Exception):
    """A command-line mistake detected after parsing (exit code 2)."""


def err(msg: str) -> None:
    """One line on stderr, prefixed with the program name."""
    print(f"lunglens: {msg}", file=sys.stderr)


def choose_model(
    args: argparse.Namespace, scan: Scan, verdict: GateVerdict | None = None
) -> ModelInfo:
    """``--model`` if given, else by the DICOM modality or, for plain images, the image check.

    Without an installed modality check a plain image falls back to the CT model, with a
    warning on stderr. ``verdict`` is the chest-image gate's for the scan: its nearest training
    modality must agree with the check for a plain image to be routed.

    Raises
    ------
    ModalityUncertain
        A plain image on which the check and the gate disagree (no model is chosen).
    """
    from lunglens.errors import ModelNotFound
    from lunglens.inference import check_modality, with_gate
    from lunglens.inference import choose_model as by_modality
    from lunglens.io import SCORED_MODALITIES, Modality
    from lunglens.models import default_model_for, get_model

    if args.model and args.model != AUTO:
        return get_model(args.model, args.models_dir)
    check = None
    if scan.modality not in SCORED_MODALITIES:
        check = with_gate(check_modality(scan, args.models_dir), verdict)
    try:
        return by_modality(scan, args.models_dir, check)
    except ModelNotFound:
        if scan.modality in SCORED_MODALITIES or check is not None:
            raise  # the fallback is for a missing check only, not a missing model
    info = default_model_for(Modality.CT, args.models_dir)
    err(
        f"warning: {Path(scan.source).name} has no modality information (plain image) and no "
        f"modality check is installed; using the CT model {info.name}. Pass --model to choose."
    )
    return info
