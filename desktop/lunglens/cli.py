"""``lunglens`` command line: classify a scan, score folders, list models, run the demo.

Commands
--------
``lunglens``                       open the desktop app (same as ``lunglens gui``)
``lunglens classify FILE``         one scan: probabilities, optional CAM PNG / PDF / JSON
``lunglens score PATH... --out X`` folders -> resumable results CSV + HTML summary
``lunglens models [--verify]``     installed models (and their integrity)
``lunglens demo``                  the bundled samples (app when a display exists, else a table)

Exit codes
----------
0   success
1   ``score``: some scans could not be read (see their error rows); any command: an output could
    not be written (disk full: rerun with --resume once space is freed) or an unexpected error
2   usage error (bad option, existing results file without --resume, resume conflict, results
    file in use by another run)
3   ``classify``: the input file cannot be read as a scan, or is not a chest scan (refused by
    the chest-image gate; the reason is printed, no score)
4   model refused (integrity check failed) or not found
130 cancelled with Ctrl-C (rows written so far are kept; rerun ``score`` with --resume)

User errors are reported as one line on stderr, never as a traceback (``--debug`` shows one).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from lunglens.io.scan import Scan
    from lunglens.models.registry import ModelInfo

#: ``--model auto``: each scan is scored by its modality's default model.
AUTO = "auto"

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_MODEL = 4
EXIT_CANCELLED = 130

EPILOG = """exit codes:
  0    success
  1    score: some scans errored (see their rows); any command: disk full or unexpected error
  2    usage error (bad option, results file exists without --resume, resume conflict,
       results file in use by another run)
  3    classify: the input cannot be read as a scan, or is not a chest scan (no score)
  4    model refused (integrity check failed) or not found
  130  cancelled with Ctrl-C (score: rows so far are kept; rerun with --resume)

Triage aid only - not a diagnosis. Results must be reviewed by a qualified clinician.
"""


class UsageError(Exception):
    """A command-line mistake detected after parsing (exit code 2)."""


def _err(msg: str) -> None:
    print(f"lunglens: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------- model choice


def _choose_model(args: argparse.Namespace, scan: Scan) -> ModelInfo:
    """``--model`` if given, else by the DICOM modality or, for plain images, the image check.

    Without an installed modality check a plain image falls back to the CT model, with a
    warning on stderr.
    """
    from lunglens.errors import ModelNotFound
    from lunglens.inference import choose_model
    from lunglens.models import default_model_for, get_model

    if args.model and args.model != AUTO:
        return get_model(args.model, args.models_dir)
    try:
        return choose_model(scan, args.models_dir)
    except ModelNotFound:
        if scan.modality in ("ct", "cxr"):
            raise
    info = default_model_for("ct", args.models_dir)
    _err(
        f"warning: {Path(scan.source).name} has no modality information (plain image) and no "
        f"modality check is installed; using the CT model {info.name}. Pass --model to choose."
    )
    return info


# --------------------------------------------------------------------------- classify


def _print_result(result: Any, out: TextIO) -> None:
    from lunglens.inference import format_prob, format_threshold, slice_numbers

    print(f"result:      {result.headline}", file=out)
    print(f"file:        {result.source}", file=out)
    print(f"modality:    {result.modality}", file=out)
    print(
        f"model:       {result.model} {result.model_version} ({result.model_sha256[:12]})", file=out
    )
    for label, p in result.probs.items():
        print(f"P({label}):{' ' * max(1, 10 - len(label))}{format_prob(p)}", file=out)
    print(
        f"threshold:   {format_threshold(result.threshold)} on P({result.positive_label})",
        file=out,
    )
    if result.n_slices > 1:
        print(
            f"slices:      {result.n_slices}; most suspicious (1 = first): "
            + ", ".join(str(n) for n in slice_numbers(result.top_slices)),
            file=out,
        )
    print(f"elapsed:     {result.elapsed_ms:.0f} ms", file=out)
    for note in result.notes:
        print(f"note:        {note}", file=out)
    print(result.disclaimer, file=out)


def _print_refusal(exc: Any, as_json: bool) -> None:
    """A refused scan on stdout (it is the answer, not a failure of the tool): no score."""
    from lunglens import DISCLAIMER

    if as_json:
        data = {"source": exc.path, "status": "refused", "error": exc.code, "reason": exc.reason}
        print(json.dumps(data, indent=2))
        return
    print(f"file:        {exc.path}")
    print(f"refused:     {exc.reason}")
    print("score:       none (LungLens scores chest CT slices and chest X-rays only)")
    print(DISCLAIMER)


def cmd_classify(args: argparse.Namespace) -> int:
    from lunglens.errors import NotChestImage, ScanError
    from lunglens.explain import cam_map, overlay, save_png
    from lunglens.inference import classify_scan, require_chest
    from lunglens.io import load_scan
    from lunglens.audit import append_audit

    try:
        scan = load_scan(args.file)
    except ScanError as exc:
        _err(f"{exc.code}: {exc}")
        return EXIT_BAD_INPUT
    try:  # before a model is chosen: a photo must not be routed, let alone scored
        require_chest(scan, args.models_dir)
    except NotChestImage as exc:
        _print_refusal(exc, args.json)
        _err(f"{exc.code}: {exc}")
        append_audit("classify", {"input": str(args.file), "refused": exc.reason})
        return EXIT_BAD_INPUT
    info = _choose_model(args, scan)
    if args.cam_class is not None and args.cam_class not in info.labels:
        raise UsageError(
            f"--cam-class {args.cam_class!r} is not a label of model {info.name} "
            f"({', '.join(info.labels)})"
        )
    want_cam = bool(args.cam or args.pdf)
    result = classify_scan(scan, info, with_cam=want_cam, cam_class=args.cam_class)
    outputs: list[str] = []
    if args.cam:
        image = scan.image[result.representative_slice]
        save_png(overlay(image, cam_map(result, None, image.shape)), args.cam)
        outputs.append(str(args.cam))
    if args.pdf:
        from lunglens.report.pdf import scan_pdf

        outputs.append(str(scan_pdf(scan, result, args.pdf, anonymize=args.anonymize)))
    if args.json:
        data = result.to_dict(slice_probs=result.n_slices > 1)
        if args.include_ids:
            data["patient_id"] = scan.metadata.get("patient_id", "")
        print(json.dumps(data, indent=2))
    else:
        _print_result(result, sys.stdout)
        for path in outputs:
            print(f"wrote:       {path}")
    append_audit(
        "classify",
        {
            "input": str(args.file),
            "model": info.name,
            "model_version": info.version,
            "model_sha256": info.sha256,
            "n_slices": result.n_slices,
            "prediction": result.prediction,
            "headline": result.headline,
            "positive_prob": round(result.positive_prob, 6),
            "flagged": result.flagged,
            "outputs": outputs,
        },
    )
    return EXIT_OK


# --------------------------------------------------------------------------- score


class ProgressLine:
    """A tqdm-like progress line on stderr (redrawn in place on a terminal, else every 10 %)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last = 0.0
        self._last_decile = -1

    def update(self, done: int, total: int, rate: float, eta: float) -> None:
        now = time.monotonic()
        frac = done / total if total else 1.0
        if self.tty:
            if now - self._last < 0.1 and done < total:
                return
            width = 30
            bar = "#" * int(frac * width)
            eta_txt = f"{int(eta // 60)}:{int(eta % 60):02d}" if eta != float("inf") else "?"
            self.stream.write(
                f"\r[{bar:<{width}}] {done}/{total} {rate:5.1f} scans/s ETA {eta_txt}  "
            )
            if done >= total:
                self.stream.write("\n")
        else:
            decile = int(frac * 10)
            if decile == self._last_decile and done < total:
                return
            self._last_decile = decile
            self.stream.write(f"{done}/{total} scans ({frac:.0%}), {rate:.1f}/s\n")
        self._last = now
        self.stream.flush()


def cmd_score(args: argparse.Namespace) -> int:
    from lunglens.batch import Finished, Progress, Started, score
    from lunglens.report.html import write_html_report

    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    info: ModelInfo | None = None  # automatic: each scan by its modality's default model
    if args.model != AUTO:
        from lunglens.models import get_model

        info = get_model(args.model, args.models_dir)
    cancel = threading.Event()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        _err("stopping after the scans in hand (Ctrl-C again to abort now)")

    previous: Callable[..., Any] | int | None = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    bar = ProgressLine()
    summary = None
    try:
        events = score(
            args.paths,
            info,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            workers=args.workers,
            cancel=cancel,
            include_ids=args.include_ids,
            models_dir=args.models_dir,
        )
        for ev in events:
            if isinstance(ev, Started):
                skipped = f", {ev.skipped} already done" if ev.skipped else ""
                how = (
                    f"with {info.name} {info.version}"
                    if info is not None
                    else "each with its modality's default model"
                )
                _err(f"scoring {ev.total} scans {how}{skipped}")
            elif isinstance(ev, Progress):
                bar.update(ev.done, ev.total, ev.rate, ev.eta_s)
            elif isinstance(ev, Finished):
                summary = ev.summary
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    assert summary is not None
    if info is None:
        print("models: " + ", ".join(summary.models))
    print(
        f"{summary.done} scored: {summary.ok} ok, {summary.flagged} flagged, "
        f"{summary.errors} errors ({summary.skipped} skipped as already done) "
        f"in {summary.elapsed_s:.1f} s -> {summary.out_csv}"
    )
    if summary.ignored:
        print(f"{len(summary.ignored)} files ignored (not scans), e.g. {summary.ignored[0]}")
    if summary.error_codes:
        print("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.error_codes.items())))
    if not args.no_report:
        models = [info] if info is not None else _auto_models(args.models_dir)
        print(f"report: {write_html_report(summary.out_csv, models)}")
    from lunglens import DISCLAIMER

    print(DISCLAIMER)
    if summary.cancelled:
        _err("cancelled; rerun with --resume to finish")
        return EXIT_CANCELLED
    return EXIT_ERRORS if summary.errors else EXIT_OK


def _auto_models(models_dir: str | None) -> list[ModelInfo]:
    from lunglens.inference.modality import default_models

    return list({m.name: m for m in default_models(models_dir).values()}.values())


# --------------------------------------------------------------------------- models


def cmd_models(args: argparse.Namespace) -> int:
    from lunglens.errors import ModelError
    from lunglens.models import discover_models, models_dir, verify_model

    models, problems = discover_models(args.models_dir)
    where = models_dir(args.models_dir)
    if not models and not problems:
        _err(f"no models found in {where} (set LUNGLENS_MODELS_DIR or --models-dir)")
        return EXIT_MODEL
    print(f"models in {where}:")
    refused = 0
    for m in models:
        status = ""
        if args.verify:
            try:
                verify_model(m)
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
    if args.verify and (refused or problems):
        return EXIT_MODEL
    return EXIT_OK


# --------------------------------------------------------------------------- gui / demo


def _has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


#: Creates a QApplication and exits: Qt aborts the whole process (SIGABRT, exit 134) when its
#: platform plugin cannot load (no X server, or libxcb-cursor0 etc. missing), so this runs in
#: a child process before the app is started in this one.
_QT_PROBE = "from PySide6.QtWidgets import QApplication; QApplication([]); print('ok')"


def qt_problem(timeout: float = 60.0) -> str:
    """Why the desktop app cannot start here, or ``""`` when it can.

    Checks for a display first (Linux without ``DISPLAY``/``WAYLAND_DISPLAY``), then starts Qt
    in a child process and reads its complaint (e.g. "could not load the Qt platform plugin
    xcb": the system libraries listed in the README are missing).
    """
    if not _has_display():
        return "no display (DISPLAY / WAYLAND_DISPLAY are not set)"
    if sys.platform in ("win32", "darwin"):
        return ""
    import subprocess

    try:
        proc = subprocess.run(
            [sys.executable, "-c", _QT_PROBE],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=os.environ.copy(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"Qt could not be started ({exc})"
    if proc.returncode == 0 and "ok" in proc.stdout:
        return ""
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    why = next((ln for ln in lines if "plugin" in ln.lower()), lines[-1] if lines else "")
    how = (
        f"aborted by signal {-proc.returncode}"
        if proc.returncode < 0
        else f"exit {proc.returncode}"
    )
    return f"Qt could not be started ({how}: {why})"


def _run_gui(paths: Sequence[str], problem: str | None = None) -> int:
    if problem is None:
        problem = qt_problem()
    if problem:
        _err(
            f"the desktop app cannot start: {problem}. On Linux, install the Qt system "
            "libraries listed in the README (section 'Linux system libraries'). The command "
            "line still works: see 'lunglens --help'."
        )
        return EXIT_ERRORS
    try:
        from lunglens.gui.app import run  # lazy: Qt is only loaded for the app
    except ImportError as exc:
        _err(
            f"the desktop app cannot start ({exc}). The command line still works: "
            "see 'lunglens --help'."
        )
        return EXIT_ERRORS
    return int(run(list(paths)) or 0)


def cmd_gui(args: argparse.Namespace) -> int:
    return _run_gui(getattr(args, "paths", []) or [])


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


def cmd_demo(args: argparse.Namespace) -> int:
    from lunglens import DISCLAIMER
    from lunglens.errors import LungLensError, NotChestImage
    from lunglens.inference import classify_scan, format_prob
    from lunglens.io import discover_sources, load_source
    from lunglens.models import resources_dir

    samples = resources_dir() / "samples"
    sources = discover_sources(samples, recursive=True)[0] if samples.is_dir() else []
    if not sources:
        _err(f"no sample scans found in {samples} (set LUNGLENS_RESOURCES_DIR)")
        return EXIT_ERRORS
    if not args.no_gui:
        problem = qt_problem()
        if not problem:
            return _run_gui([str(p) for s in sources for p in s.paths[:1]], problem)
        _err(f"the desktop app cannot start: {problem}; printing the demo as text")
    known = sample_labels(samples)
    rows: list[tuple[str, ...]] = []
    failed = 0
    inferred = False
    for src in sources:
        name = Path(src.key.split("#")[0]).name
        label = known.get(name, "?")
        try:
            scan: Scan = load_source(src)
            info = _choose_model(args, scan)
            res = classify_scan(scan, info, with_cam=False)
            modality = scan.modality
            if modality not in ("ct", "cxr"):  # plain image: routed by the image check
                modality, inferred = f"{info.modality}*", True
            rows.append(
                (
                    name,
                    label,
                    modality,
                    f"{info.name} {info.version}",
                    format_prob(res.positive_prob),
                    res.headline,
                )
            )
        except NotChestImage as exc:  # the gate at work (the brain-CT sample): not a failure
            rows.append((name, label, "?", "-", "-", f"refused, no score: {exc.reason}"))
        except LungLensError as exc:
            failed += 1
            rows.append((name, label, "?", "-", "-", f"error: {exc.code}"))
    header = ("file", "known label", "modality", "model", "P(covid)", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if inferred:
        print("\n* plain image: modality inferred from the pixels by the modality check")
    print(
        "\nP(covid) = the model's probability of COVID-19 findings; known label = the sample's "
        f"label in its source data set (resources/samples/LICENSE.md). {DISCLAIMER}"
    )
    return EXIT_ERRORS if failed else EXIT_OK


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to render ``--help`` in the docs)."""
    from lunglens import __version__

    parser = argparse.ArgumentParser(
        prog="lunglens",
        description="Offline COVID-19 triage aid for chest CT and X-ray.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lunglens {__version__}")
    parser.add_argument(
        "--models-dir",
        help="folder of models (default: $LUNGLENS_MODELS_DIR or the installed models)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    p = add("gui", cmd_gui, "open the desktop app (optionally with scans)")
    p.add_argument("paths", nargs="*")

    p = add("classify", cmd_classify, "classify one scan (image, DICOM file or series folder)")
    p.add_argument("file")
    p.add_argument(
        "--model", help="model name, or 'auto' (default): the scan's modality's default model"
    )
    p.add_argument("--cam", metavar="OUT.png", help="write the CAM overlay as PNG")
    p.add_argument("--cam-class", metavar="LABEL", help="class to explain (default: positive)")
    p.add_argument("--pdf", metavar="OUT.pdf", help="write a one-page PDF summary")
    p.add_argument(
        "--anonymize",
        action="store_true",
        help="leave patient ID/name, study date and accession number out of the PDF",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--include-ids", action="store_true", help="include the patient id (JSON)")

    p = add("score", cmd_score, "score files and folders into a results CSV")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument(
        "--model",
        default=AUTO,
        help="model name, or 'auto' (default): each scan by its modality's default model",
    )
    p.add_argument("--out", required=True, type=Path, metavar="results.csv")
    p.add_argument("--resume", action="store_true", help="skip scans already in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--workers", type=int, default=2, help="decoder threads (default 2)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML summary")
    p.add_argument("--include-ids", action="store_true", help="add a patient_id column")

    p = add("models", cmd_models, "list installed models")
    p.add_argument("--verify", action="store_true", help="check every model's SHA-256")

    p = add("demo", cmd_demo, "score the bundled sample scans")
    p.add_argument("--no-gui", action="store_true", help="print a table even with a display")
    p.add_argument("--model", help="model for all samples (default: by modality)")

    from lunglens.selftest import add_parser as add_selftest  # installation check (#8)

    add_selftest(add)
    return parser


def _tolerant_output() -> None:
    """Print any file name: bytes that are not valid in the terminal's encoding (a Latin-1 name
    read with surrogateescape) are shown as ``\\xNN``/``\\udcNN`` instead of raising."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a closed or foreign stream: leave it as it is
                pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see the module docstring)."""
    _tolerant_output()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (argparse printed it)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        return _run_gui([])
    from lunglens.errors import LungLensError, ModelError, OutputError, ScanError

    try:
        return int(args.func(args))
    except OutputError as exc:
        _err(f"{exc.code}: {exc}")
        return EXIT_ERRORS
    except ModelError as exc:
        _err(f"{exc.code}: {exc}")
        return EXIT_MODEL
    except ScanError as exc:
        _err(f"{exc.code}: {exc}")
        return EXIT_BAD_INPUT
    except (LungLensError, UsageError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("cancelled")
        return EXIT_CANCELLED
    except BrokenPipeError:  # e.g. `lunglens models | head`
        return EXIT_OK
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return _unexpected(args, exc)
        where = exc.filename or "an output file"
        _err(
            f"{where}: the disk is full ({exc.strerror}). Free some space and rerun the same "
            "command (score: with --resume, which keeps the rows already written)."
        )
        return EXIT_ERRORS
    except Exception as exc:
        return _unexpected(args, exc)


def _unexpected(args: argparse.Namespace, exc: BaseException) -> int:
    if args.debug:
        traceback.print_exception(exc)
    _err(f"unexpected error: {type(exc).__name__}: {exc} (rerun with --debug for details)")
    return EXIT_ERRORS


if __name__ == "__main__":
    raise SystemExit(main())
