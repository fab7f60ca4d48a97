"""Model cards: the card writers reproduce the shipped cards from the shipped manifests.

The shipped EfficientNet-Lite cards and manifests were written together by ``lunglens-train``,
so rewriting a card from its manifest and ``metrics.json`` must give the same text byte for
byte; a change in a section writer shows up as a diff against a real card.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lunglens.models import ModelManifest
from lunglens.training.card import write_card
from lunglens.training.presets import PRESETS

MODELS = Path(__file__).resolve().parents[1] / "models"


def _shipped(name: str) -> tuple[ModelManifest, dict]:
    data = json.loads((MODELS / name / "manifest.json").read_text(encoding="utf-8"))
    # the pipeline holds the augmentation as dataclasses.asdict(AugmentConfig): scale is a tuple
    aug = data["training"]["augmentation"]
    aug["scale"] = tuple(aug["scale"])
    metrics = json.loads((MODELS / name / "metrics.json").read_text(encoding="utf-8"))
    return ModelManifest.from_dict(data), metrics


@pytest.mark.parametrize(
    "name",
    [
        *sorted(p.parent.name for p in MODELS.glob("efficientnet-lite-*/manifest.json")),
        "squeezenet-light-ct",
        "squeezenet-light-cxr",
    ],
)
def test_card_matches_the_shipped_card(name: str, tmp_path: Path) -> None:
    manifest, metrics = _shipped(name)
    assert manifest.training is not None
    write_card(tmp_path, manifest, metrics, PRESETS[manifest.training["preset"]])
    shipped = (MODELS / name / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8") == shipped


def test_distilled_card_names_its_teacher_and_how(tmp_path: Path) -> None:
    """The shipped CT SqueezeNet is a student: its banner and training section say of whom and
    how, not only "trained from scratch"."""
    from dataclasses import replace

    manifest, metrics = _shipped("squeezenet-light-ct")
    assert manifest.training is not None
    assert manifest.training["distilled_from"]["preset"] == "ct-efficientnet-lite-plain"

    def lines(m: ModelManifest) -> list[str]:
        write_card(tmp_path, m, metrics, PRESETS["ct-squeezenet"])
        return (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8").splitlines()

    text = lines(manifest)
    banner = next(line for line in text if line.startswith("> **Triage aid"))
    assert "Trained from scratch, distilled from `ct-efficientnet-lite-plain`," in banner
    weights = next(line for line in text if line.startswith("- Pretrained weights"))
    assert "Distilled from the `ct-efficientnet-lite-plain` models (fold by fold): KL" in weights
    # a model without a teacher keeps the plain wording
    scratch = replace(manifest, training={**manifest.training, "distilled_from": None})
    assert "not a diagnosis.** Trained from scratch on small" in lines(scratch)[2]


def test_card_while_cross_validation_runs(tmp_path: Path) -> None:
    """Without CV metrics the card says the evaluation is pending and keeps every other section."""
    manifest, _ = _shipped("efficientnet-lite-ct")
    assert manifest.training is not None
    write_card(tmp_path, manifest, None, PRESETS[manifest.training["preset"]])
    text = (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "- Pending: cross-validation has not finished." in text
    assert "### Per source" not in text and "![ROC]" not in text
    for section in ("## Model", "## Training", "## Quantization", "## Where the model looks"):
        assert section in text
    assert text.endswith(f"- {manifest.intended_use}\n")


def test_modality_check_card_matches_the_shipped_card() -> None:
    """The generated part of the modality check's card; the shipped card adds a hand-written
    section on the chest-image gate before "Intended use"."""
    pytest.importorskip("torch")
    from lunglens.training.modality import card

    folder = MODELS / "modality-check"
    shipped = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    head, gate = shipped.split("## Chest-image gate", 1)
    expected = head + "## Intended use" + gate.split("## Intended use", 1)[1]
    assert card(ModelManifest.read(folder / "manifest.json")) == expected


def test_student_card_compares_teacher_and_control_on_the_same_folds(tmp_path: Path) -> None:
    """A distilled student's card puts its pooled out-of-fold numbers next to its teacher's and
    to the control's (same views, no teacher), read from their metrics.json; a control that
    has not run is named with the command that runs it."""
    from dataclasses import replace

    manifest, lite_metrics = _shipped("efficientnet-lite-ct")
    student = PRESETS["ct-squeezenet-distilled"]
    assert student.views_from == "ct-efficientnet-lite-plain" and student.teacher
    teacher_dir = tmp_path / PRESETS["ct-efficientnet-lite-plain"].model_name
    teacher_dir.mkdir()
    (teacher_dir / "metrics.json").write_text(json.dumps(lite_metrics), encoding="utf-8")
    out = tmp_path / student.model_name
    out.mkdir()
    weaker = json.loads(json.dumps(lite_metrics))
    weaker["pooled_out_of_fold"]["per_class"]["covid"]["auc"] = 0.5
    weaker["per_source"]["misc"]["per_class"]["covid"]["auc"] = float("nan")  # one class
    student_manifest = replace(manifest, training={**manifest.training, "preset": student.name})
    write_card(out, student_manifest, weaker, student)
    text = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    # the network column comes from each manifest (the own manifest here is the Lite's; the
    # teacher's folder holds no manifest, so its network is not known)
    assert rows[0].startswith(
        "| `ct-squeezenet-distilled` (this model) | efficientnet-lite0, 224 px | body | 0 "
        "| per class | - | `ct-efficientnet-lite-plain` | 0.500 |"
    )
    auc = lite_metrics["pooled_out_of_fold"]["per_class"]["covid"]["auc"]
    sars = lite_metrics["per_source"]["sars-cov-2-ct"]["per_class"]["covid"]["auc"]
    assert rows[1].startswith(
        f"| `ct-efficientnet-lite-plain` | - | body | 3 | per class | - | - | {auc:.3f} |"
    )
    # the last of the sources in name order, then the CAM's share inside the lungs: the own
    # manifest has one; the teacher's folder holds no manifest, so its share is not known
    assert rows[1].endswith(f"| {sars:.3f} | n/a |")
    cam = manifest.cam_in_lungs["mean"]
    assert rows[0].endswith(f"| {100 * cam:.1f}% |")
    header = next(line for line in text.splitlines() if line.startswith("| model |"))
    # only two-class sources have a within-source AUC (single-class ones are NaN in metrics)
    assert "AUC within misc" not in header and "nan" not in rows[1]
    assert "AUC within ct-512" in header
    assert header.endswith(" |") and header.count("|") == rows[0].count("|") == rows[1].count("|")
    assert (
        rows[2] == "| `ct-squeezenet-views` | - | not run (`lunglens-train ct-squeezenet-views`) |"
    )
    # a preset compared with nothing carries no such section
    write_card(tmp_path, manifest, lite_metrics, PRESETS["ct-squeezenet-scratch"])
    assert "Compared on the same folds" not in (tmp_path / "MODEL_CARD.md").read_text()


def test_comparison_is_kept_when_the_compared_model_leaves(tmp_path: Path) -> None:
    """The compared rows are snapshot into the model's metrics.json, so its card can be rebuilt
    from its own folder after the compared model is removed from models/."""
    import shutil
    from dataclasses import replace

    from lunglens.training.card import comparison_snapshot

    manifest, body_metrics = _shipped("efficientnet-lite-ct")
    lungs = PRESETS["ct-efficientnet-lite-lungs"]
    assert lungs.compared_with[0] == "ct-efficientnet-lite-plain"
    body_dir = tmp_path / PRESETS["ct-efficientnet-lite-plain"].model_name
    body_dir.mkdir()
    (body_dir / "metrics.json").write_text(json.dumps(body_metrics), encoding="utf-8")
    # the compared model's network and input size come from its own manifest
    body_manifest = json.loads((MODELS / "efficientnet-lite-ct" / "manifest.json").read_text())
    body_manifest["input"]["size"] = [288, 288]
    (body_dir / "manifest.json").write_text(json.dumps(body_manifest), encoding="utf-8")
    out = tmp_path / lungs.model_name
    out.mkdir()
    snap = comparison_snapshot(out, lungs, "covid")
    assert snap["ct-efficientnet-lite-plain"]["cam_in_lungs"] == manifest.cam_in_lungs["mean"]
    auc = body_metrics["pooled_out_of_fold"]["per_class"]["covid"]["auc"]
    assert snap["ct-efficientnet-lite-plain"]["auc"] == auc
    shutil.rmtree(body_dir)
    assert comparison_snapshot(out, lungs, "covid") == {}
    assert comparison_snapshot(out, lungs, "covid", snap) == snap
    own = json.loads(json.dumps(body_metrics))
    own["pooled_out_of_fold"]["per_class"]["covid"]["auc"] = 0.75
    own["compared"] = snap
    lungs_manifest = replace(manifest, training={**manifest.training, "preset": lungs.name})
    write_card(out, lungs_manifest, own, lungs)
    rows = [
        line
        for line in (out / "MODEL_CARD.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `")
    ]
    assert rows[0].startswith(
        "| `ct-efficientnet-lite-lungs` (this model) | efficientnet-lite0, 224 px | lungs | 3 |"
        " per class | - | - | 0.750 |"
    )
    assert rows[1].startswith(
        f"| `ct-efficientnet-lite-plain` | efficientnet-lite0, 288 px | body | 3 | per class | - |"
        f" - | {auc:.3f} |"
    )
    # the compared model's CAM share came from its manifest and stays in the snapshot
    assert rows[1].endswith(f"| {100 * manifest.cam_in_lungs['mean']:.1f}% |")


def test_compared_models_are_found_among_the_candidates(tmp_path: Path) -> None:
    """A shipped card compares with measured variants, which live in runs/candidate-models,
    not beside it in models/: the snapshot looks in every folder it is given, own folder
    first."""
    from lunglens.training.card import comparison_snapshot

    _, metrics = _shipped("efficientnet-lite-ct")
    shipped = PRESETS["ct-efficientnet-lite"]
    k2 = PRESETS["ct-efficientnet-lite-k2"]
    assert k2.name in shipped.compared_with and not k2.shipped
    models, cands = tmp_path / "models", tmp_path / "candidates"
    (models / shipped.model_name).mkdir(parents=True)
    (cands / k2.model_name).mkdir(parents=True)
    tweaked = json.loads(json.dumps(metrics))
    tweaked["pooled_out_of_fold"]["per_class"]["covid"]["auc"] = 0.61
    (cands / k2.model_name / "metrics.json").write_text(json.dumps(tweaked), encoding="utf-8")
    out = models / shipped.model_name
    assert k2.name not in comparison_snapshot(out, shipped, "covid")
    snap = comparison_snapshot(out, shipped, "covid", search=(models, cands))
    assert snap[k2.name]["auc"] == 0.61
    # a copy beside the model wins over the candidate folder
    (models / k2.model_name).mkdir()
    (models / k2.model_name / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    snap = comparison_snapshot(out, shipped, "covid", search=(models, cands))
    assert snap[k2.name]["auc"] == metrics["pooled_out_of_fold"]["per_class"]["covid"]["auc"]


def test_measured_variants_are_written_apart_from_the_shipped_models() -> None:
    pytest.importorskip("torch")
    from lunglens.training.cli import CANDIDATES, default_models_dir

    shipped = {p.model_name for p in PRESETS.values() if p.shipped}
    in_models = {d.name for d in MODELS.iterdir() if (d / "manifest.json").is_file()}
    assert shipped == in_models - {"modality-check"}
    for p in PRESETS.values():
        where = default_models_dir(p)
        assert where == (MODELS if p.shipped else MODELS.parent / CANDIDATES), p.name
        assert p.shipped or not p.default_for_modality, "a default model ships"


def test_int8_parity_is_reported_at_the_shipped_threshold(tmp_path: Path) -> None:
    """A recipe picked before the CV (at the validation fold's own threshold) is also judged
    at the pooled threshold the app ships with; one picked again at the shipped threshold
    after the CV says so once, without the second sentence."""
    from dataclasses import replace

    manifest, metrics = _shipped("efficientnet-lite-ct")
    assert manifest.training is not None
    preset = PRESETS[manifest.training["preset"]]
    q = dict(manifest.quantization or {})
    par = q["parity_shipped_threshold"]
    assert par["threshold"] == manifest.operating_point["threshold"]
    assert manifest.threshold == round(par["threshold"], 4)

    def card(**changes) -> str:
        write_card(tmp_path, replace(manifest, quantization={**q, **changes}), metrics, preset)
        return (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8")

    before = card(threshold_basis="validation fold")
    flips = round((1 - par["agreement"]) * par["n"])
    assert f"; at the shipped threshold {par['threshold']:.4f}: agreement" in before
    assert f"({flips} of {par['n']} decisions differ)" in before
    after = card(threshold_basis="shipped")
    assert f"images) at the shipped threshold {manifest.threshold:.4f}: decision agreement" in after
    assert "decisions differ" not in after
    q.pop("parity_shipped_threshold")
    assert "decisions differ" not in card(threshold_basis="validation fold")


def test_every_compared_preset_exists_and_is_another_preset() -> None:
    """A card names its compared models by preset; a renamed or removed preset would make
    writing the card fail after hours of training."""
    for preset in PRESETS.values():
        for name in preset.compared_with:
            assert name in PRESETS, f"{preset.name} compares with unknown preset {name}"
            assert name != preset.name
            assert PRESETS[name].modality == preset.modality, (preset.name, name)


def test_trial_table_marks_the_shipped_recipe_and_the_timing_the_rule_compared(
    tmp_path: Path,
) -> None:
    """A reader must see which trial shipped and the latency the choice used (its graph's
    median), not only each trial's own noisy timing."""
    from dataclasses import replace

    from lunglens.training.quantize import choose_trial

    manifest, metrics = _shipped("squeezenet-light-cxr")
    q = dict(manifest.quantization or {})
    trials = [dict(t) for t in q["trials"]]
    # the X-ray SqueezeNet 2.0.1 search: one 15-Conv trial timed 13.5 ms, its graph 8.0 ms
    slow = max(range(len(trials)), key=lambda i: trials[i]["single_image_ms"])
    assert choose_trial(trials) == q["chosen_trial"]
    write_card(tmp_path, manifest, metrics, PRESETS["cxr-squeezenet"])
    rows = [
        line
        for line in (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| ") and line.count("|") == 12 and "points" in line
    ]
    assert len(rows) == len(trials)
    assert [i for i, r in enumerate(rows) if r.endswith("| **yes** |")] == [q["chosen_trial"]]
    cells = rows[slow].split(" | ")
    assert float(cells[-3]) == round(trials[slow]["single_image_ms"], 1)
    assert float(cells[-2]) < float(cells[-3])  # the graph's median, below the outlier
    # another chosen trial moves the mark
    other = (q["chosen_trial"] + 1) % len(trials)
    write_card(
        tmp_path,
        replace(manifest, quantization={**q, "chosen_trial": other}),
        metrics,
        PRESETS["cxr-squeezenet"],
    )
    text = (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8")
    marked = [line for line in text.splitlines() if line.endswith("| **yes** |")]
    assert (
        len(marked) == 1
        and marked[0]
        == [line for line in text.splitlines() if line.startswith("| ") and "points" in line][other]
    )


def test_a_rewritten_card_keeps_the_parity_measured_again_on_the_same_file(
    tmp_path: Path,
) -> None:
    """A run that rewrites a model folder (a new comparison row) keeps what ``--stages parity``
    measured on that folder's files, while the INT8 file is the same; a new file drops it."""
    from dataclasses import replace

    pytest.importorskip("torch")  # the pipeline module imports the trainer
    from lunglens.training.pipeline import MEASURED_AGAIN, keep_measured_again

    shipped, _metrics = _shipped("efficientnet-lite-cxr")
    assert shipped.quantization is not None and "parity_measured_again" in shipped.quantization
    (tmp_path / "manifest.json").write_text(json.dumps(shipped.to_dict()), encoding="utf-8")
    q = {k: v for k, v in shipped.quantization.items() if k not in MEASURED_AGAIN}
    from_state = replace(shipped, quantization=q)  # what a run's state writes
    kept = keep_measured_again(tmp_path, from_state)
    assert kept.quantization == shipped.quantization
    other_file = replace(from_state, sha256="0" * 64)
    assert keep_measured_again(tmp_path, other_file).quantization == q
