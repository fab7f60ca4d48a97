"""``lunglens-train``: reproduce a shipped model end to end.

Examples
--------
``lunglens-train cxr-squeezenet`` trains, cross-validates, exports and quantizes
``models/squeezenet-light-cxr/`` (CPU: 128 px; CUDA: 224 px with mixed precision).
``lunglens-train ct-squeezenet`` distils ``models/squeezenet-light-ct/`` from the fold models
of ``ct-efficientnet-lite-plain`` (run that first); ``--stages teacher`` keeps the teacher's
logits so the student can train on a lent GPU (docs/training.md).
``torchrun --nproc_per_node=4 -m lunglens.training.cli ct-efficientnet-b5`` uses 4 GPUs.
``lunglens-train modality-check`` trains the image-level CT-vs-X-ray check
(``models/modality-check/``); ``lunglens-train ood`` refits the chest-image gate's statistics
next to it (``ood.npz``, numpy + onnxruntime only).
A measured variant (``Preset.shipped`` False, e.g. ``ct-efficientnet-lite-k2``) writes its
folder to ``runs/candidate-models/`` unless ``--models-dir`` is given.
Killed runs resume: run the same command again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lunglens.training.pipeline import STAGES, Pipeline, PipelineOptions, default_workdir
from lunglens.training.presets import PRESETS, Preset

#: Not a triage preset: the CT-vs-X-ray routing model (lunglens.training.modality).
MODALITY_CHECK = "modality-check"
#: Not a model: the chest-image gate's statistics (lunglens.training.ood).
OOD = "ood"


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


#: Where measured variants (``Preset.shipped`` False) write their model folder by default.
CANDIDATES = Path("runs") / "candidate-models"


def default_models_dir(preset: Preset | None, seed: int = 0) -> Path:
    """``models/`` for the shipped presets and the routing model; ``runs/candidate-models``
    for a measured variant, so that running one never adds a folder to what the app ships;
    ``runs/candidate-models/seed<N>`` for any preset trained with another seed (a repeat that
    measures the run-to-run spread, never a shipped folder)."""
    if seed:
        return _repo_root() / CANDIDATES / f"seed{seed}"
    if preset is None or preset.shipped:
        return _repo_root() / "models"
    return _repo_root() / CANDIDATES


def build_parser() -> argparse.ArgumentParser:
    """The options of ``lunglens-train`` (documented in ``docs/training.md``)."""
    ap = argparse.ArgumentParser(
        prog="lunglens-train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("preset", choices=[*sorted(PRESETS), MODALITY_CHECK, OOD])
    ap.add_argument("--data-root", type=Path, default=_repo_root().parent / "shared" / "data")
    ap.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help=f"default: models/ for a shipped preset, {CANDIDATES} for a measured variant",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--device", choices=["auto", "cpu"], default="auto")
    ap.add_argument("--size", type=int, default=None, help="override the preset resolution")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="class-balanced subset (smoke tests)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument(
        "--val-fold",
        type=int,
        default=None,
        help="final model's validation fold (default: the most representative)",
    )
    ap.add_argument("--skip-cv", action="store_true", help="final model only (no CV metrics)")
    ap.add_argument("--calib-images", type=int, default=300)
    ap.add_argument(
        "--calibration",
        choices=["MinMax", "Entropy", "Percentile", "auto"],
        default=None,
        help="INT8 calibration (default: the preset's; auto = measure candidates, keep the best)",
    )
    ap.add_argument(
        "--requantize",
        action="store_true",
        help="make the INT8 file again (a new recipe or candidates) from the trained model; the "
        "training, the CV and the operating point are kept",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="training seed (initial weights, batch order, augmentation; default 0, the shipped "
        "runs'): another seed repeats a recipe to measure its run-to-run spread, in its own "
        "work folder (runs/<model>-seed<N>) and models folder (runs/candidate-models/seed<N>)",
    )
    ap.add_argument("--version", default=None, help="manifest version (default: the preset's)")
    ap.add_argument(
        "--stages",
        choices=STAGES,
        default="all",
        help="train: the final model and the CV folds only (on a lent GPU machine; a later "
        "run with all stages exports, quantizes and writes the card); teacher: what a preset "
        "trained on a teacher's views needs from the teacher's work folder and the scans (the "
        "teacher logits of every run; with lung attention, the lung cells of the views), kept "
        "in its work folder before its training goes to a GPU machine that lacks them; cam: "
        "measure the shipped model folder's share of CAM mass inside the lung field again "
        "and write it into its manifest and card (nothing is trained); parity: score the "
        "shipped INT8 file against its float file again on the validation fold, in the app's "
        "sessions, and write that into its manifest and card (after a runtime change); "
        "quantize: search the INT8 recipe again from the shipped float file and ship the "
        "chosen file as the preset's new version, its CAM check and reference measured again "
        "(when the run's work folder, which --requantize needs, is gone)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.0f}s] {msg}", flush=True)

    if args.stages != "all" and args.preset in (OOD, MODALITY_CHECK):
        parser.error(f"--stages {args.stages} is for the triage presets only")
    preset = PRESETS.get(args.preset)
    if args.stages == "teacher" and not (preset and preset.keeps_teacher_inputs):
        parser.error(
            "--stages teacher keeps a teacher's logits or the lung cells of its views, for "
            f"presets trained on a teacher's views only ({args.preset} needs neither)"
        )
    if args.seed < 0:
        parser.error("--seed must be 0 or more")
    if args.seed and args.preset in (OOD, MODALITY_CHECK):
        parser.error("--seed is for the triage presets only")
    if args.seed and args.stages in ("cam", "parity", "quantize"):
        parser.error(f"--stages {args.stages} measures a shipped folder: --seed trains nothing")
    models_dir = args.models_dir or default_models_dir(preset, args.seed)
    if args.preset == OOD:
        from lunglens.training import ood

        ood.run(args.data_root, models_dir, log=log)
        log("done")
        return 0
    if args.preset == MODALITY_CHECK:
        from lunglens.training import modality

        # epochs and version only when given: modality.run's defaults are the recipe's
        given = {k: v for k, v in dict(epochs=args.epochs, version=args.version).items() if v}
        modality.run(
            args.data_root,
            models_dir,
            args.workdir or default_workdir(MODALITY_CHECK),
            device=args.device,
            log=log,
            **given,
        )
        log("done")
        return 0
    assert preset is not None  # a triage preset (argparse choices)
    opts = PipelineOptions(
        data_root=args.data_root,
        models_dir=models_dir,
        workdir=args.workdir
        or default_workdir(preset.model_name + (f"-seed{args.seed}" if args.seed else "")),
        device=args.device,
        seed=args.seed,
        size=args.size,
        epochs=args.epochs,
        limit=args.limit,
        folds=args.folds,
        skip_cv=args.skip_cv,
        val_fold=args.val_fold,
        calib_images=args.calib_images,
        calibration=args.calibration,
        requantize=args.requantize,
        version=args.version,
        # the compared models of a card: shipped ones and measured candidates
        compare_dirs=(default_models_dir(None), _repo_root() / CANDIDATES),
    )
    Pipeline(preset, opts, log).run(args.stages)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
