"""``lunglens classify FILE``: one scan, its probabilities and optional CAM PNG / PDF / JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from lunglens.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    AddCommand,
    UsageError,
    choose_model,
    err,
)

if TYPE_CHECKING:
    from lunglens.inference.result import ScanResult
    from lunglens.io.scan import Scan
    from lunglens.models.registry import ModelInfo


def _print_result(result: ScanResult, out: TextIO) -> None:
    from lunglens.inference import format_prob, format_threshold, slice_numbers
    from lunglens.inference.wording import slice_count

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
            f"slices:      {slice_count(result)}; most suspicious (1 = first): "
            + ", ".join(str(n) for n in slice_numbers(result.top_slices)),
            file=out,
        )
    print(f"elapsed:     {result.elapsed_ms:.0f} ms", file=out)
    for note in result.notes:
        print(f"note:        {note}", file=out)
    print(result.disclaimer, file=out)


def _no_score_reason(exc: Any) -> str:
    """The ``score:`` line's reason, fitting why there is no score: the other modality's model
    (its hint says what to do), not a chest scan, or a file that could not be read at all (a
    chest-only wording would wrongly suggest the file was looked at and judged)."""
    from lunglens.errors import ModalityMismatch, NotChestImage

    if isinstance(exc, ModalityMismatch):
        return f"none; {exc.hint[:1].lower()}{exc.hint[1:]}"
    if isinstance(exc, NotChestImage):  # its hint, e.g. how to export an inverted image
        rest = exc.hint.removeprefix("No score is given: ").rstrip(".")
        if not rest or rest.startswith("LungLens scores"):
            return "none (LungLens scores chest CT slices and chest X-rays only)"
        return f"none; {rest}"
    return "none (the input could not be read as a scan)"


def _print_refusal(exc: Any, source: str, as_json: bool) -> None:
    """A refused scan on stdout (it is the answer, not a failure of the tool): no score.

    ``exc`` is a :class:`~lunglens.errors.NotChestImage` (not a chest scan), a
    :class:`~lunglens.errors.ModalityMismatch` (a chest scan of the other modality than the
    chosen model's) or another :class:`~lunglens.errors.ScanError` (the input could not be
    read as a scan): a script reading stdout gets an answer in every case. ``source`` names the
    input when the error does not."""
    from lunglens import DISCLAIMER

    where = exc.path if exc.path is not None else source
    if as_json:
        data = {
            "source": where,
            "status": "refused",
            "error": exc.code,
            "reason": exc.reason,
            "hint": exc.hint,
        }
        print(json.dumps(data, indent=2))
        return
    print(f"file:        {where}")
    print(f"refused:     {exc.reason}")
    print(f"score:       {_no_score_reason(exc)}")
    print(DISCLAIMER)


def _refuse(args: argparse.Namespace, exc: Any) -> int:
    """A refused or unreadable scan (:func:`_print_refusal`): its line on stderr and in the
    audit log; exit code 3."""
    from lunglens.audit import append_audit
    from lunglens.errors import ModalityMismatch, NotChestImage

    _print_refusal(exc, str(args.file), args.json)
    err(f"{exc.code}: {exc}")
    record = {"input": str(args.file), "outcome": "refused", "error": exc.code}
    # the gate's and the routing's reasons are LungLens's own words; a decoder's message may
    # quote the file's content, and the audit log never holds patient data (failure_fields)
    if isinstance(exc, NotChestImage | ModalityMismatch):
        record["refused"] = exc.reason
    append_audit("classify", record)
    return EXIT_BAD_INPUT


def _cam_scale_note(result: ScanResult) -> str:
    """:data:`lunglens.explain.FLOOR_NOTE` when the ``--cam`` map is drawn against the model's
    reference peak (the image is not flagged), else "" (scaled to its own peak)."""
    from lunglens.explain import FLOOR_NOTE, result_floor

    return FLOOR_NOTE if result_floor(result, result.cam_class) is not None else ""


def _write_outputs(args: argparse.Namespace, scan: Scan, result: ScanResult) -> list[str]:
    """The ``--cam`` PNG and the ``--pdf`` page asked for; their paths."""
    from lunglens.explain import cam_map, caption_lines, overlay, png_text, save_png, with_footer

    outputs: list[str] = []
    if args.cam:
        i = result.representative_slice
        image = scan.image[i]
        lines = caption_lines(result, result.cam_class, i)
        rgb = overlay(image, cam_map(result, None, image.shape))
        save_png(with_footer(rgb, lines), args.cam, png_text(result, lines))
        outputs.append(str(args.cam))
    if args.pdf:
        from lunglens.report.pdf import scan_pdf

        outputs.append(str(scan_pdf(scan, result, args.pdf, anonymize=args.anonymize)))
    return outputs


def _audit_record(
    args: argparse.Namespace, info: ModelInfo, result: ScanResult, outputs: list[str]
) -> dict[str, Any]:
    """The audit line of a scored scan: input, model and decision, never patient ids."""
    return {
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
        "outcome": "scored",
    }


def _json_result(args: argparse.Namespace, scan: Scan, result: ScanResult) -> dict[str, Any]:
    """The ``--json`` object: :meth:`ScanResult.to_dict` with its slice indices turned into the
    slice numbers a person reads (1 = the first slice), as in the text, the CSV and the PDF;
    ``slice_probs`` stays a list whose first entry is slice 1."""
    from lunglens.inference import slice_numbers

    data = result.to_dict(slice_probs=result.n_slices > 1)
    data["top_slices"] = slice_numbers(result.top_slices)
    data["representative_slice"] = slice_numbers([result.representative_slice])[0]
    data["unscored_slices"] = slice_numbers(result.unscored_slices)
    if args.include_ids:
        data["patient_id"] = scan.metadata.get("patient_id", "")
    return data


def _classify(args: argparse.Namespace) -> int:
    """Load, gate, choose the model, classify; print the result and append the audit line."""
    from lunglens.audit import append_audit
    from lunglens.errors import ModalityMismatch, NotChestImage, ScanError
    from lunglens.inference import classify_scan, require_chest
    from lunglens.io import load_scan

    try:
        scan = load_scan(args.file)
    except ScanError as exc:  # unreadable, corrupt, too large, missing: no score, said so
        return _refuse(args, exc)
    try:  # before a model is chosen: a photo must not be routed, let alone scored (the CT
        # feature check is judged by classify_scan, for the chosen model's family)
        verdict = require_chest(scan, args.models_dir, features=False)
        info = choose_model(args, scan, verdict)
    except (NotChestImage, ModalityMismatch) as exc:  # ModalityUncertain: no model chosen
        return _refuse(args, exc)
    if args.cam_class is not None and args.cam_class not in info.labels:
        raise UsageError(
            f"--cam-class {args.cam_class!r} is not a label of model {info.name} "
            f"({', '.join(info.labels)})"
        )
    want_cam = bool(args.cam or args.pdf)
    try:
        result = classify_scan(scan, info, with_cam=want_cam, cam_class=args.cam_class)
    except (NotChestImage, ModalityMismatch) as exc:  # the CT feature check; the other
        return _refuse(args, exc)  # modality's model named: refused, no score
    outputs = _write_outputs(args, scan, result)
    if args.json:
        print(json.dumps(_json_result(args, scan, result), indent=2))
    else:
        _print_result(result, sys.stdout)
        for path in outputs:
            print(f"wrote:       {path}")
        if args.cam and (note := _cam_scale_note(result)):
            print(f"cam scale:   {note}")
    append_audit("classify", _audit_record(args, info, result, outputs))
    return EXIT_OK


def cmd_classify(args: argparse.Namespace) -> int:
    """:func:`_classify`, and an audit line (``outcome`` ``error``) for a run it stopped with an
    error (model refused, output not written, ...): every run leaves its trace in the log."""
    from lunglens.audit import append_audit, failure_fields

    try:
        return _classify(args)
    except BaseException as exc:
        append_audit("classify", {"input": str(args.file), **failure_fields(exc)})
        raise


def add_parser(add: AddCommand) -> None:
    """Register ``classify`` and its options."""
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
