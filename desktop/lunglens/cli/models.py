"""``lunglens models [--verify]``: the installed models and, with ``--verify``, their integrity."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from lunglens.cli.common import EXIT_MODEL, EXIT_OK, AddCommand, err

if TYPE_CHECKING:
    from lunglens.models.registry import ModelInfo


def verify_files(info: ModelInfo) -> None:
    """Check every file of ``info`` that the app uses against its manifest: the ONNX model
    and, for the modality check, its gate statistics (manifest ``ood`` and ``feature_check``,
    the latter with the CT model it was fitted on, in the same folder of models), with the same
    checks ``classify`` makes before using them, so "verified" means the model will not be
    refused.

    Raises
    ------
    ModelRefused
        A file is missing, damaged or modified (or the statistics are of another version).
    """
    from lunglens.inference.gate_feature_check import load_feature_check
    from lunglens.inference.gate_stats import load_stats
    from lunglens.models import verify_model

    verify_model(info)
    load_stats(info)  # None when the manifest names no statistics
    load_feature_check(info, info.path.parent)


def cmd_models(args: argparse.Namespace) -> int:
    """List the models found; exit 4 when none is found or, with ``--verify``, one is refused
    (a manifest without its seal, or edited after it, is among the unusable folders) or the
    chest-image gate's modality-check model is missing."""
    from lunglens.errors import ModelError
    from lunglens.models import discover_models, models_dir

    models, problems = discover_models(args.models_dir)
    where = models_dir(args.models_dir)
    if not models and not problems:
        err(f"no models found in {where} (set LUNGLENS_MODELS_DIR or --models-dir)")
        return EXIT_MODEL
    print(f"models in {where}:")
    refused = 0
    for m in models:
        status = ""
        if args.verify:
            try:
                verify_files(m)
                status = "  verified"
            except ModelError as exc:
                refused += 1
                status = f"  REFUSED: {exc}"
        print(
            f"  {m.name} {m.version}  [{m.modality}]  labels={','.join(m.labels)}  "
            f"input={m.input_size[0]}x{m.input_size[1]}  threshold={m.threshold:.3f}  "
            f"sha256={m.short_hash}{status}"
        )
    for problem in problems:
        print(f"  unusable: {problem}")
    # without it the chest-image gate keeps only its tag and pixel rules (a head CT saved as
    # PNG would be scored): the install is not complete, as selftest says too
    gateless = (
        args.verify
        and models
        and not any(m.task == "modality-check" for m in models)
        and not any("modality-check" in str(p) for p in problems)  # there, but unusable
    )
    if gateless:
        print(
            "  missing: no modality-check model: the chest-image gate would keep only its tag "
            "and pixel rules; reinstall the models shipped with this version"
        )
    if args.verify and (refused or problems or gateless):
        return EXIT_MODEL
    return EXIT_OK


def add_parser(add: AddCommand) -> None:
    """Register ``models``."""
    p = add("models", cmd_models, "list installed models")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check the SHA-256 of every model file and the seal of every manifest's decision "
        "fields (threshold, labels, input)",
    )
