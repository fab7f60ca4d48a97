"""Model card (MODEL_CARD.md) and evaluation plots (ROC, confusion matrix) for models/<name>/."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lunglens.io import Modality
from lunglens.models.manifest import ModelManifest

if TYPE_CHECKING:
    from lunglens.training.presets import Preset

# What the data sets' README measured about their sources (../shared/data/README.md).
_LIMITS = {
    Modality.CT: [
        "- Sources differ in look (`normal-ct-512` is lung-masked on black, `ct-512`/`mosmed` "
        "have a round grey field of view, `sars-cov-2-ct` is cropped to the lungs) and several "
        "hold a single class, so part of what the model learned is the source, not the disease "
        "(see the within-source AUC above). Expect lower accuracy on scans from a new hospital.",
        "- Trained and cross-validated on 2-D slices. The series rule (top-3 mean) is checked per "
        "patient above only on the slices the data holds per patient (a few to a few dozen), "
        "not on whole CT series of hundreds of slices.",
    ],
    Modality.CXR: [
        "- Small and imbalanced (782 images; `normal` 89) and source-confounded: each class leans "
        "on one source (see the per-source table), so part of what the model learned is the "
        "source, not the disease. Expect lower accuracy on X-rays from a new hospital.",
        "- Frontal (PA/AP) adult X-rays only; lateral views and portable bedside artefacts beyond "
        "those in the public sets were not tested.",
    ],
}


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def _ci(m: dict) -> str:
    if m["lo"] != m["lo"]:
        return _pct(m["mean"])
    return f"{_pct(m['mean'])} ({_pct(m['lo'])}-{_pct(m['hi'])})"


def write_plots(work: Path, out: Path, ds, positive: int, threshold: float) -> None:
    """ROC of pooled out-of-fold predictions (one curve per fold) and the confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lunglens.training.metrics import decide, roc_auc, roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    k = 0
    while (work / f"fold{k}_test.npz").exists():
        z = np.load(work / f"fold{k}_test.npz")
        y = (ds.labels[z["idx"]] == positive).astype(int)
        fpr, tpr, _ = roc_curve(y, z["probs"][:, positive])
        ax.plot(fpr, tpr, lw=1, label=f"fold {k} AUC {roc_auc(y, z['probs'][:, positive]):.3f}")
        k += 1
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC, '{ds.classes[positive]}' vs rest (test folds)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png")
    plt.close(fig)

    z = np.load(work / "oof.npz")
    pred = decide(z["probs"], positive, threshold)
    n = len(ds.classes)
    cm = np.zeros((n, n), int)
    for t, p in zip(z["labels"], pred, strict=True):
        cm[t, p] += 1
    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=100)
    ax.imshow(cm, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    ax.set_xticks(range(n), ds.classes)
    ax.set_yticks(range(n), ds.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Out-of-fold, threshold {threshold:.2f}")
    fig.tight_layout()
    fig.savefig(out / "confusion.png")
    plt.close(fig)


_REWRITE_TEXT = {
    "elu_as_min_exp_max": "ELU as max(x, alpha * (exp(min(x, 0)) - 1))",
    "block_transposed_conv_as_conv_depth_to_space": (
        "transposed convs with kernel = stride as a 1x1 conv + DepthToSpace"
    ),
}


def _export_line(export: Mapping[str, Any]) -> list[str]:
    """How the float graph was written (the rewrites compute the same function)."""
    if not export:
        return []
    rewrites = [_REWRITE_TEXT.get(r, r) for r in export.get("graph_rewrites", [])]
    diff = export.get("probs_max_abs_diff_vs_pytorch")
    return [
        f"- ONNX export: opset {export.get('opset', '?')}"
        + (
            f"; exact rewrites for onnxruntime's CPU kernels: {'; '.join(rewrites)}"
            if rewrites
            else ""
        )
        + (f"; max |probs(PyTorch) - probs(ONNX float)| {diff:.1e}" if diff is not None else "")
        + "."
    ]


def _exclusion_text(t: Mapping[str, Any]) -> str:
    ex = t.get("excluded_from_training") or []
    if not ex:
        return ""
    return (
        f" Left out of training (still validated and tested, reported per source): "
        f"{', '.join(ex)}, a single-class source whose look alone gives the label away."
    )


def _pretrained_text(t: Mapping[str, Any]) -> str:
    pre = t.get("pretrained")
    if not pre:
        return "- Pretrained weights: none (trained from scratch)." + _distilled_text(t)
    text = (
        f"- Pretrained weights: ImageNet, {pre['source']} ({pre['licence']}, SHA-256 "
        f"`{pre['sha256'][:16]}...`), used at training time only: the app ships this ONNX file."
    )
    return text + _distilled_text(t)


def _distilled_text(t: Mapping[str, Any]) -> str:
    teacher = t.get("distilled_from")
    if not teacher:
        return ""
    how = f": {teacher['how']}" if teacher.get("how") else ""
    return f" Distilled from the `{teacher['preset']}` models (fold by fold){how}."


def _schedule_text(t: Mapping[str, Any]) -> str:
    cfg = t.get("config") or {}
    epochs = t["epochs_max"]
    if cfg.get("schedule") == "onecycle":
        return f"{epochs} epochs, Adam with a one-cycle learning rate (peak {cfg.get('lr')})"
    return (
        f"up to {epochs} epochs, Adam, ReduceLROnPlateau (factor 0.5, patience 3) and early "
        "stopping"
    )


def write_card(out: Path, manifest: ModelManifest, metrics: dict | None, preset: Preset) -> None:
    """Write ``out/MODEL_CARD.md`` for a triage model from its manifest and CV metrics.

    ``metrics`` is ``None`` while the cross-validation runs (the card then says so).
    """
    m = manifest
    lines = [
        *_header_lines(m),
        *_model_lines(m),
        *_training_lines(m, preset),
        *_quantization_lines(m),
        *_evaluation_lines(m, metrics),
        *_comparison_lines(out, m, metrics, preset),
        *_cam_lines(m.cam_in_lungs, m.cam_reference),
        *_limits_lines(m),
    ]
    (out / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


def _network(manifest: Mapping[str, Any]) -> str | None:
    """The architecture and input size a manifest names ("efficientnet-lite0, 288 px"): the
    compared models may differ in either, which the recipe columns do not show."""
    size = (manifest.get("input") or {}).get("size")
    if not manifest.get("arch") or not size:
        return None
    return f"{manifest['arch']}, {size[0]} px"


def _summary(
    met: Mapping[str, Any], pos: str, cam: Mapping[str, Any] | None, network: str | None = None
) -> dict[str, Any]:
    """What the comparison table shows of one model's ``metrics.json``: pooled out-of-fold
    numbers, the other classes' sensitivity, the AUC within every two-class source, the
    share of CAM mass inside the lung field (``cam``: the manifest's ``cam_in_lungs``) and the
    network and input size (``network``, from the manifest)."""
    pooled = met["pooled_out_of_fold"]
    c = pooled["per_class"][pos]
    aucs = {
        src: r.get("per_class", {}).get(pos, {}).get("auc")
        for src, r in sorted(met["per_source"].items())
    }
    # a single-class source has no AUC (None, or NaN from the metrics)
    within = {src: auc for src, auc in aucs.items() if auc is not None and auc == auc}
    others = {k: v["sensitivity"] for k, v in pooled["per_class"].items() if k != pos}
    return dict(
        auc=c["auc"],
        sensitivity=c["sensitivity"],
        specificity=c["specificity"],
        accuracy=pooled["accuracy"],
        macro_f1=pooled["macro_f1"],
        other_sensitivity=others,
        within=within,
        cam_in_lungs=(cam or {}).get("mean"),
        network=network,
    )


def comparison_snapshot(
    out: Path,
    preset: Preset,
    pos: str,
    previous: Mapping[str, Any] | None = None,
    search: Sequence[Path] = (),
) -> dict[str, dict]:
    """The compared presets' rows, kept in this model's ``metrics.json`` (key ``compared``).

    Read from each preset's ``metrics.json`` beside ``out`` or in a folder of ``search``
    (shipped models and measured candidates live apart) when it is there, else kept from
    ``previous`` (the last snapshot): the card can be rebuilt from this model's own folder
    after a compared model has left ``models/``.
    """
    from lunglens.training.presets import PRESETS

    rows: dict[str, dict] = {}
    for name in preset.compared_with:
        model = PRESETS[name].model_name
        folder = next(
            (d / model for d in (out.parent, *search) if (d / model / "metrics.json").is_file()),
            None,
        )
        if folder is not None:
            path = folder / "manifest.json"
            manifest = json.loads(path.read_text()) if path.is_file() else {}
            rows[name] = _summary(
                json.loads((folder / "metrics.json").read_text()),
                pos,
                manifest.get("cam_in_lungs"),
                _network(manifest),
            )
        elif previous and name in previous:
            rows[name] = dict(previous[name])
    return rows


def _comparison_lines(
    out: Path, m: ModelManifest, metrics: dict | None, preset: Preset
) -> list[str]:
    """This model next to the presets it is measured against (``Preset.compared_with``: a
    student's teacher and control, a crop's alternative), all on the same folds. The rows come
    from :func:`comparison_snapshot`; a preset not run yet is named with its command."""
    if not preset.compared_with or metrics is None:
        return []
    from lunglens.training.presets import PRESETS

    pos = m.positive_label
    snapshot = comparison_snapshot(out, preset, pos, metrics.get("compared"))
    own = _summary(metrics, pos, m.cam_in_lungs, _network(m.to_dict()))
    rows = [(preset, own)] + [(PRESETS[name], snapshot.get(name)) for name in preset.compared_with]
    sources = list(own["within"])
    # the other classes' sensitivity only where there are several (X-ray: normal, pneumonia)
    others = list(own["other_sensitivity"]) if len(own["other_sensitivity"]) > 1 else []
    # the CAM's share inside the lungs where it was measured (CT)
    cam = any(row and row.get("cam_in_lungs") is not None for _, row in rows)
    header = [
        "model",
        "network",
        "crop",
        "frozen stages",
        "loss weights",
        "lung attention",
        "teacher",
        "AUC",
        f"sensitivity `{pos}`",
        "specificity",
        "accuracy",
        "macro-F1",
        *(f"sensitivity `{k}`" for k in others),
        *(f"AUC within {s}" for s in sources),
        *(["CAM in lung field"] if cam else []),
    ]
    lines = [
        "",
        "### Compared on the same folds (pooled out-of-fold, each model at its own threshold)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for p, row in rows:
        if row is None:
            lines.append(f"| `{p.name}` | - | not run (`lunglens-train {p.name}`) |")
            continue
        cells = [
            f"`{p.name}`{' (this model)' if p is preset else ''}",
            row.get("network") or "-",
            p.preprocessing.crop,
            str(p.frozen_stages),
            "per source" if p.balance == "source" else "per class",
            f"{p.lung_attention:g}" if p.lung_attention else "-",
            f"`{p.teacher}`" if p.teacher else "-",
            f"{row['auc']:.3f}",
            _pct(row["sensitivity"]),
            _pct(row["specificity"]),
            _pct(row["accuracy"]),
            _pct(row["macro_f1"]),
            *(_pct(row["other_sensitivity"].get(k)) for k in others),
            *(
                f"{row['within'][s]:.3f}" if row["within"].get(s) is not None else "-"
                for s in sources
            ),
            *([_pct(row.get("cam_in_lungs"))] if cam else []),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _origin_text(t: Mapping[str, Any]) -> str:
    """Where the weights came from, for the card's banner."""
    if t.get("pretrained"):
        return "Fine-tuned from ImageNet weights"
    if t.get("distilled_from"):
        return f"Trained from scratch, distilled from `{t['distilled_from']['preset']}`,"
    return "Trained from scratch"


def _header_lines(m: ModelManifest) -> list[str]:
    t = m.training or {}
    return [
        f"# Model card: {m.name} {m.version}",
        "",
        "> **Triage aid only - not a diagnosis.** "
        + _origin_text(t)
        + " on small public research data sets; not validated on scans from any hospital.",
        "",
    ]


def _model_lines(m: ModelManifest) -> list[str]:
    inp, q = m.input, m.quantization or {}
    window = inp.get("window")
    return [
        "## Model",
        f"- Architecture: {m.architecture}.",
        f"- Modality: {m.modality}; labels {list(m.labels)}; positive label `{m.positive_label}`.",
        f"- Input: `image` float32 [N, 1, {inp['size'][0]}, {inp['size'][1]}] in [0, 1]"
        + (
            f", CT {window['name']} window (W {window['width']:.0f} / "
            f"L {window['center']:.0f}) for DICOM"
            if window
            else ""
        )
        + _prep_text(inp.get("preprocessing") or {}),
        f"- File: `model.onnx`, INT8 ({q['scheme']}), SHA-256 `{m.sha256}`.",
        f"- Operating threshold {m.threshold}: {m.threshold_rule}.",
        "",
    ]


def _attention_text(t: Mapping[str, Any]) -> str:
    weight = (t.get("config") or {}).get("lung_attention") or 0.0
    if not weight:
        return ""
    return (
        f"; lung-attention penalty, weight {weight:g}: the share of class evidence (CAM) "
        "outside the lung field is added to the loss (`lunglens.training.attention`)"
    )


def _as_written(aug: Mapping[str, Any]) -> dict[str, Any]:
    """The augmentation as the preset holds it (ranges as tuples), whether it comes from the
    run or from a manifest read back from JSON (lists): a card written again reads the same."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()}


def _training_lines(m: ModelManifest, preset: Preset) -> list[str]:
    t = m.training or {}
    final = t["final_model"]
    return [
        "## Training",
        f"- Data: {t['data']}." + _exclusion_text(t),
        _pretrained_text(t),
        f"- Recipe `lunglens-train {preset.name}`: resolution {t['resolution']} px, "
        f"{_schedule_text(t)}, label smoothing, "
        f"{'loss weights: ' + t['loss_weights'] if t.get('loss_weights') else 'class weights'}"
        f"{_attention_text(t)}; the checkpoint with the best "
        f"validation-fold {t.get('monitor', 'unweighted cross-entropy')} is kept; "
        f"augmentation {_as_written(t['augmentation'])}.",
        f"- Device: {t['device']}. Final model: {final.get('epochs_run')} epochs, best "
        f"epoch {final.get('best_epoch')}, {final.get('seconds', 0) / 60:.1f} min; "
        f"cross-validation {t['cv_seconds'] / 60:.1f} min."
        + (f" Trained on {t['trained_on_images']}." if t.get("trained_on_images") else "")
        + (f" CV: {t['cv_predicted']}." if t.get("cv_predicted") else ""),
        "",
    ]


def _shipped_parity_text(par: Mapping[str, Any] | None) -> str:
    """The same images judged at the shipped threshold, which is chosen after the CV."""
    if not par:
        return ""
    flips = round((1 - par["agreement"]) * par["n"])
    return (
        f"; at the shipped threshold {par['threshold']:.4f}: agreement {_pct(par['agreement'])} "
        f"({flips} of {par['n']} decisions differ), accuracy change "
        f"{par['accuracy_change_points']:+.2f} points"
    )


def _sessions_text(again: Mapping[str, Any]) -> str:
    """The command, runtime and session settings a shipped-folder stage measured with."""
    off = ", ".join(again.get("disabled_optimizers", [])) or "none"
    return (
        f"`{again['command']}`, {again['runtime']}, the app's sessions, graph transformers "
        f"off: {off}"
    )


def _measured_again_text(again: Mapping[str, Any] | None) -> str:
    """Where the parity was scored again on the files as shipped (``--stages parity``)."""
    if not again:
        return ""
    return (
        f" (measured again on the shipped files: {_sessions_text(again)}; the trials below are "
        "as the search measured them)"
    )


def _searched_again_line(again: Mapping[str, Any] | None) -> list[str]:
    """Where the recipe was searched again from the shipped float file (``--stages
    quantize``): the trials below are that search's."""
    if not again:
        return []
    qat = (
        " (with the quantization-aware candidate, fine-tuned from the float file's own network)"
        if again.get("qat_candidate")
        else ""  # the preset has none (the only folder searched before QAT could run here)
    )
    return [
        f"- Searched again from the shipped float file (version {again['from_version']}'s "
        f"INT8 replaced): {_sessions_text(again)}; validation fold {again['val_fold']}{qat}."
    ]


def _quantization_lines(m: ModelManifest) -> list[str]:
    q = m.quantization or {}
    par = q["parity_validation_fold"]
    shipped = q.get("threshold_basis") == "shipped" and "threshold" in q
    where = f" at the shipped threshold {q['threshold']:.4f}" if shipped else ""
    return [
        "## Quantization",
        *_export_line(m.export or {}),
        f"- Calibration: {q['calibration_images']} training images, {q['calibration_method']}. "
        f"INT8 op types: {', '.join(q['quantized_op_types'])}; kept in float: "
        f"{', '.join(q['float_op_types'])} (nodes {', '.join(q['float_nodes']) or 'none'}).",
        *_weight_rounding_line(q.get("weight_rounding")),
        *_bias_correction_line(q.get("bias_correction")),
        *_qat_line(q),
        f"- Parity on validation fold ({par['n']} images){where}: "
        f"decision agreement {_pct(par['agreement'])}, "
        f"accuracy float {_pct(par['accuracy_float'])} vs INT8 {_pct(par['accuracy_int8'])} "
        f"({par['accuracy_change_points']:+.2f} points), max |dp| {par['max_abs_prob_diff']:.3f}"
        f"{'' if shipped else _shipped_parity_text(q.get('parity_shipped_threshold'))}"
        f"{_measured_again_text(q.get('parity_measured_again'))}.",
        *_searched_again_line(q.get("searched_again")),
        *_quantization_trials(q),
        "",
    ]


def _weight_rounding_line(wr: Mapping[str, Any] | None) -> list[str]:
    """How the weights were rounded, when the chosen recipe used GPTQ."""
    if not wr:
        return []
    return [
        f"- Weight rounding: {wr['method']}, {wr['convs']} INT8 Conv layers; each layer's "
        f"output error on the {wr['images']} calibration images, median over layers, "
        f"{wr['output_error_ratio']:.2f}x that of rounding to nearest."
    ]


def _bias_correction_line(bc: Mapping[str, Any] | None) -> list[str]:
    """What the empirical bias correction did, when the chosen recipe used it."""
    if not bc:
        return []
    return [
        f"- Bias correction: {bc['method']}, {bc['convs']} INT8 Conv layers, mean per-channel "
        f"output shift removed {bc['mean_abs_shift']:.4f}, measured on the "
        f"{bc['images']} calibration images."
    ]


def _qat_line(q: Mapping[str, Any]) -> list[str]:
    """How the quantization-aware candidate's weights were made, when the search tried one."""
    qat = q.get("qat")
    if not qat:
        return []
    chosen = bool(q.get("trials") and q["trials"][q["chosen_trial"]].get("qat"))
    kl = ", ".join(f"{v:.4f}" for v in qat["kl_per_epoch"])
    verdict = (
        "This is the shipped INT8 file."
        if chosen
        else "Not chosen; its measurements are in the table below."
    )
    return [
        f"- Quantization-aware distillation (`MinMax after QAT` in the table; "
        f"lunglens.training.qat): a copy of the float model fine-tuned {qat['epochs']} epochs "
        f"(Adam, learning rate {qat['lr']:g}) on {qat['images']} training images with BatchNorm "
        f"folded and INT8 simulated (weights per channel, {qat['simulated_activations']} "
        f"activations uint8, the first {qat['float_convs']} Conv layers float) to match the "
        f"float model's probabilities; KL(float || simulated INT8) per epoch {kl}. Its INT8 "
        "copy is scored against the original float model (`model_fp32.onnx`, the one the "
        f"cross-validation describes). {verdict}"
    ]


def _evaluation_lines(m: ModelManifest, metrics: dict | None) -> list[str]:
    """Cross-validation at the shipped threshold, per class, per source, per patient."""
    lines = ["## Evaluation (group-wise cross-validation)"]
    if metrics is None:
        return [*lines, "- Pending: cross-validation has not finished."]
    pos = m.positive_label
    lines += _summary_lines(metrics, pos)
    lines += _per_source_lines(metrics, list(m.labels), pos)
    lines += _series_lines(metrics.get("per_patient_series"), pos)
    lines += _operating_point_lines(m, metrics, pos)
    return [*lines, "", "![ROC](roc.png) ![Confusion](confusion.png)"]


def _summary_lines(metrics: dict, pos: str) -> list[str]:
    """Mean over test folds at the shipped threshold, the per-class table, the fold thresholds."""
    s = metrics["at_shipped_threshold"]
    pc = s["per_class"][pos]
    lines = [
        f"- {metrics['scheme']}. Mean over 5 test folds with 95% t-intervals, at the shipped "
        "threshold:",
        f"  - accuracy {_ci(s['accuracy'])}, macro-F1 {_ci(s['macro_f1'])}",
        f"  - `{pos}`: sensitivity {_ci(pc['sensitivity'])}, "
        f"specificity {_ci(pc['specificity'])}, "
        f"precision {_ci(pc['precision'])}, F1 {_ci(pc['f1'])}, AUC {_ci(pc['auc'])}",
        "",
        "| class | sensitivity | specificity | precision | F1 | AUC |",
        "|---|---|---|---|---|---|",
    ]
    for c, v in s["per_class"].items():
        lines.append(
            f"| {c} | {_ci(v['sensitivity'])} | {_ci(v['specificity'])} | "
            f"{_ci(v['precision'])} | {_ci(v['f1'])} | {_ci(v['auc'])} |"
        )
    own = metrics["at_fold_threshold"]
    return [
        *lines,
        "",
        f"- With each fold's own validation-chosen threshold (the procedure, not one number): "
        f"accuracy {_ci(own['accuracy'])}, `{pos}` sensitivity "
        f"{_ci(own['per_class'][pos]['sensitivity'])}.",
    ]


def _per_source_lines(metrics: dict, labels: list[str], pos: str) -> list[str]:
    """Pooled out-of-fold results per data source, with the within-source AUC."""
    lines = [
        "",
        "### Per source (pooled out-of-fold predictions, shipped threshold)",
        "",
        "Within-source AUC of `" + pos + "` (n/a where a source holds one class) is the "
        "honest test of whether the model sees the disease or the source: near 50% means it "
        "cannot separate the classes once the source's look is fixed.",
        "",
        "| source | n | accuracy | "
        + " | ".join(f"sens. {c}" for c in labels)
        + f" | AUC `{pos}` within source |",
        "|---|---|---|" + "---|" * (len(labels) + 1),
    ]
    for src, r in metrics["per_source"].items():
        lines.append(
            f"| {src} | {r['n']} | {_pct(r['accuracy'])} | "
            + " | ".join(_pct(r["per_class"][c]["sensitivity"]) for c in labels)
            + f" | {_pct(r['per_class'][pos].get('auc'))} |"
        )
    return lines


def _limits_lines(m: ModelManifest) -> list[str]:
    return [
        "",
        "## Limits and what was not tested",
        *_LIMITS[Modality(m.modality)],
        "- CV metrics are from PyTorch fp32 fold models; the shipped INT8 model's parity was "
        "measured on its validation fold only.",
        "- Not tested: other diseases that look like COVID-19 on imaging beyond those in the data, "
        "children, scanners/protocols outside the public sets.",
        "",
        "## Intended use",
        f"- {m.intended_use}",
    ]


#: What each crop of lunglens.preprocess.CROPS does, in a card's words.
_CROP_TEXT = {
    "body": "cropped to the body's bounding box",
    "lungs": "cropped to the bounding box of both lung fields (the body's box if the lungs "
    "are not found)",
}


def _prep_text(prep: Mapping[str, Any]) -> str:
    steps = []
    crop = _CROP_TEXT.get(str(prep.get("crop", "none")))
    if crop:
        steps.append(crop)
    if prep.get("intensity") == "percentile":
        steps.append("its intensities stretched between their 1st and 99th percentiles")
    if not steps:
        return "; the whole image is resized (stretched) to that size."
    return (
        "; " + ", ".join(steps) + " (`lunglens.preprocess.model_view`, the same code in "
        "training and in the app), then resized to that size; the CAM is mapped back into the "
        "whole image."
    )


def _operating_point_lines(m: ModelManifest, metrics: dict, pos: str) -> list[str]:
    """Pooled out-of-fold operating point, its spread over folds, the series threshold."""
    op = m.operating_point
    if not op:
        return []
    pooled = metrics.get("pooled_out_of_fold") or {}
    pc = (pooled.get("per_class") or {}).get(pos, {})
    spread = op["fold_threshold_spread"]
    lines = [
        "",
        "### Operating point (pooled out-of-fold predictions of all folds)",
        "",
        f"- Threshold {op['threshold']:.4f}: {op['rule']}.",
        f"- At that threshold, pooled over all {pooled.get('n', '?')} images: accuracy "
        f"{_pct(pooled.get('accuracy'))}, `{pos}` sensitivity {_pct(op['sensitivity'])}, "
        f"specificity {_pct(op['specificity'])} (= specificity at sensitivity "
        f"{_pct(op['sensitivity'])}), AUC {_pct(pc.get('auc'))}, macro-F1 "
        f"{_pct(pooled.get('macro_f1'))}.",
        f"- The same rule applied to each test fold alone gives thresholds "
        f"{spread['min']:.3f}-{spread['max']:.3f} (median {spread['median']:.3f}, sd "
        f"{spread['sd']:.3f}): how much the operating point moves with the data.",
    ]
    series = op.get("series")
    if series:
        lines.append(
            f"- CT series (the app's rule): threshold {series['threshold']:.4f} on the "
            f"aggregated P, {series['rule']}; over {series['groups']} patient groups: sensitivity "
            f"{_pct(series['sensitivity'])}, specificity {_pct(series['specificity'])}, AUC "
            f"{_pct(series.get('auc'))}."
        )
    return lines


def _cam_lines(cam: Mapping[str, Any] | None, reference: Mapping[str, Any] | None) -> list[str]:
    """Where the CAM lies (CT: the lung-field share) and the scale of a not-flagged map."""
    if not cam and not reference:
        return []
    lines = ["", "## Where the model looks"]
    if cam:
        per = ", ".join(f"{k} {_pct(v)}" for k, v in cam["per_source"].items())
        lines.append(
            f"- Share of the CAM's mass inside the lung field: mean {_pct(cam['mean'])}, median "
            f"{_pct(cam['median'])} ({cam['method']}). Per source: {per}."
        )
        if "aerated_mean" in cam:
            lines.append(
                f"- Inside the aerated (dark) lung only, lesions left out "
                f"(lunglens.preprocess.lung_mask): mean {_pct(cam['aerated_mean'])}."
            )
    if reference:
        values = ", ".join(f"`{k}` {v:.3g}" for k, v in reference["values"].items())
        lines.append(
            f"- Colour scale of a scan that is not flagged ({values}): {reference['rule']}. "
            "Weak evidence stays faint; a flagged scan's map is scaled to its own maximum."
        )
    lines.append("- The map is where the model looked, not a lesion outline.")
    return lines


def _series_lines(series: dict | None, pos: str) -> list[str]:
    """Per-patient results with the app's series aggregation (CT models)."""
    if not series:
        return []
    rep = series["report"]
    pc = rep["per_class"][pos]
    agg = series["aggregation"]
    lines = [
        "",
        f"### Per patient (pooled out-of-fold slices, aggregated as the app does: "
        f"{agg['method']}, k={agg['k']}; shipped threshold)",
        "",
        f"- {series['groups']} groups (patients where the data names them, else blocks of "
        f"consecutive slices; median {series['slices_per_group']['median']:g} slices, max "
        f"{series['slices_per_group']['max']}); {series['mixed_groups_skipped']} groups with "
        "conflicting slice labels left out.",
        f"- accuracy {_pct(rep['accuracy'])}; `{pos}`: sensitivity {_pct(pc['sensitivity'])}, "
        f"specificity {_pct(pc['specificity'])}, AUC {_pct(pc['auc'])}.",
        "",
        "| source | groups | accuracy | sensitivity | specificity | AUC |",
        "|---|---|---|---|---|---|",
    ]
    for src, r in series.get("per_source", {}).items():
        lines.append(
            f"| {src} | {r['groups']} | {_pct(r['accuracy'])} | "
            f"{_pct(r['sensitivity'])} | {_pct(r['specificity'])} | {_pct(r['auc'])} |"
        )
    return lines


def _kept_float(trial: Mapping[str, Any]) -> str:
    """What a quantization trial left in float: op types and the first N Conv layers."""
    kept = list(trial["kept_float"])
    if trial.get("float_first_convs"):
        kept.append(f"first {trial['float_first_convs']} Conv layers")
    return ", ".join(kept) or "-"


def _quantization_trials(q: Mapping[str, Any]) -> list[str]:
    """The measured candidates when the recipe was chosen by ``search_quantization``, the
    shipped one marked, with the median timing of the trials that share a trial's graph
    (``quantize.graph_latencies``, what the search compares since it measured one graph at
    2.2-4.3 ms within one search) beside each trial's own. The selection text is the
    manifest's: the rule of the search that wrote it."""
    from lunglens.training.quantize import graph_latencies

    if not q.get("trials"):
        return []
    rows = [
        f"- Recipe chosen by measurement ({q['selection']}):",
        "",
        "| calibration | kept in float | depthwise weights | weight rounding | bias correction "
        "| agreement | accuracy change | max abs dp | ms / image | graph's median ms | shipped |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # agreement to 0.01%: against a 99.5% bar, 99.46% must not read as 99.5%
    no_depthwise = q.get("depthwise_weight_max_abs") == 0  # e.g. SqueezeNet
    graph_ms = graph_latencies(q["trials"])
    for i, t in enumerate(q["trials"]):
        dw = "-" if no_depthwise else f"{8 if t.get('depthwise_8bit') else 7} bits"
        rows.append(
            f"| {t['calibration_method']}{' after QAT' if t.get('qat') else ''} | "
            f"{_kept_float(t)} | {dw} | {'GPTQ' if t.get('gptq') else 'nearest'} | "
            f"{'yes' if t.get('bias_correction') else 'no'} | "
            f"{100 * t['agreement']:.2f}% | {t['accuracy_change_points']:+.2f} points | "
            f"{t['max_abs_prob_diff']:.3f} | {t['single_image_ms']:.1f} | {graph_ms[i]:.1f} | "
            f"{'**yes**' if i == q.get('chosen_trial') else ''} |"
        )
    return rows
