"""Local validation (``lunglens validate``): a results file against a clinic's own labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lunglens.cli import main
from lunglens.errors import ValidationInputError
from lunglens.report.statistics import auc_ci, roc_auc, wilson_ci
from lunglens.report.validation import read_labels, summary_lines, validate, validate_files

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "resources" / "samples"


def test_wilson_interval_matches_the_published_formula_values() -> None:
    lo, hi = wilson_ci(8, 10)  # Brown, Cai & DasGupta 2001; statsmodels gives the same
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_ci(0, 5)
    assert lo == 0.0 and hi == pytest.approx(0.4345, abs=1e-4)  # not zero-width at 0/n
    assert all(math.isnan(v) for v in wilson_ci(0, 0))


def test_hanley_mcneil_standard_error_of_their_table() -> None:
    lo, hi = auc_ci(0.9, 50, 50)  # Hanley & McNeil 1982, table 1: SE 0.032 at A=0.9, n=50/50
    assert (hi - lo) / (2 * 1.96) == pytest.approx(0.032, abs=6e-4)
    assert all(math.isnan(v) for v in auc_ci(float("nan"), 3, 3))


def test_auc_counts_ties_half() -> None:
    y = np.array([1, 1, 0, 0])
    assert roc_auc(y, np.array([0.8, 0.5, 0.5, 0.1])) == pytest.approx(3.5 / 4)
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def _row(path: str, p: float, thr: float = 0.2, model: str = "m", status: str = "ok") -> dict:
    ok = status == "ok"
    return {
        "path": path,
        "status": status,
        "error": "" if ok else "CorruptFile: broken",
        "model": model,
        "model_version": "1.0" if model else "",
        "model_sha256": "ab" * 32 if model else "",
        "p_covid": f"{p:.6f}" if ok else "",
        "p_non-covid": f"{1 - p:.6f}" if ok else "",
        "flagged": ("true" if p >= thr else "false") if ok else "",
        "threshold": f"{thr:.3f}" if model else "",
    }


def test_counts_decisions_at_the_rows_threshold_and_keeps_errors_apart() -> None:
    rows = [
        _row("a.png", 0.9),  # covid, flagged: TP
        _row("b.png", 0.1),  # covid, missed: FN
        _row("c.png", 0.3),  # non-covid, flagged: FP
        _row("d.png", 0.05),  # non-covid: TN
        _row("e.png", 0.04),  # non-covid: TN
        _row("f.png", 0.0, status="error"),  # covid, not scored
        _row("g.png", 0.0, model="", status="error"),  # refused before a model was chosen
        _row("h.png", 0.5),  # not labelled
        _row("a.png", 0.1),  # a resumed file's duplicate: the first row counts
    ]
    labels = {
        "a.png": "covid",
        "b.png": "covid",
        "c.png": "non-covid",
        "d.png": "non-covid",
        "e.png": "non-covid",
        "f.png": "covid",
        "g.png": "non-covid",
        "z.png": "covid",
    }
    v = validate(rows, labels)
    (m,) = v.models
    assert (m.n, m.sensitivity.k, m.sensitivity.n) == (5, 1, 2)
    assert (m.specificity.k, m.specificity.n) == (2, 3)
    assert (m.ppv.k, m.ppv.n, m.npv.k, m.npv.n) == (1, 2, 2, 3)
    assert m.accuracy.value == pytest.approx(3 / 5)
    assert m.auc == pytest.approx(5 / 6)  # a beats c, d, e; b beats d, e (not c)
    assert m.by_label == {
        "covid": {"flagged": 1, "not_flagged": 1},
        "non-covid": {"flagged": 1, "not_flagged": 2},
    }
    assert m.not_scored == {"covid": 1}
    assert v.not_scored_unrouted == {"non-covid": 1}
    assert v.unlabelled == ["h.png"] and v.not_in_results == ["z.png"]
    assert m.thresholds == [0.2] and m.local_threshold is None  # 2 positives: no suggestion
    assert (m.n_positive, m.n_negative) == (2, 3)
    text = "\n".join(summary_lines(v))
    assert "sensitivity  50.0% (1/2" in text and "specificity  66.7% (2/3" in text
    assert "not scored (no decision; read these yourself): 1 (covid 1)" in text
    assert "no interval: under 10 scans" in text
    assert text.startswith("Triage aid only")


def test_local_threshold_and_auc_interval_with_enough_scans() -> None:
    rng = np.random.default_rng(0)
    p = np.r_[rng.uniform(0.1, 1.0, 40), rng.uniform(0.0, 0.5, 60)]
    rows = [_row(f"s{i}.png", float(x)) for i, x in enumerate(p)]
    labels = {f"s{i}.png": "covid" if i < 40 else "non-covid" for i in range(100)}
    (m,) = validate(rows, labels).models
    assert m.local_threshold is not None
    pos = np.round(p[:40], 6)  # as the results file holds them
    assert (pos >= m.local_threshold).mean() >= 0.95  # keeps the floor ...
    assert (pos >= m.local_threshold + 0.001).mean() < 0.95  # ... the largest shown (rounded down)
    assert m.auc_low < m.auc < m.auc_high
    rows[-1]["threshold"] = "0.300"  # a series row: another decision rule in the group
    assert validate(rows, labels).models[0].local_threshold is None


def test_paths_match_however_written() -> None:
    v = validate([_row("scans/a.png", 0.9)], {"scans/./a.png": "covid"})
    assert v.models[0].n == 1 and v.unlabelled == []


def test_refusals_name_what_is_wrong() -> None:
    with pytest.raises(ValidationInputError, match=r"'COVID-19'.*covid, non-covid"):
        validate([_row("a.png", 0.9)], {"a.png": "COVID-19"})
    # a label of a scan the results file does not hold is not checked (one site-wide file)
    assert validate([_row("a.png", 0.9)], {"a.png": "covid", "x.png": "pneumonia"}).models
    with pytest.raises(ValidationInputError, match=r"results: a.png; labels: b.png"):
        validate([_row("a.png", 0.9)], {"b.png": "covid"})
    row = _row("a.png", 0.9)
    del row["threshold"]
    with pytest.raises(ValidationInputError, match="'threshold' column, so it is not a results"):
        validate([row], {"a.png": "covid"})
    with pytest.raises(ValidationInputError, match=r"a.png: .*could not convert"):
        validate([_row("a.png", 0.9) | {"threshold": ""}], {"a.png": "covid"})


def test_flagged_is_read_in_any_case_and_nothing_else() -> None:
    """A spreadsheet re-saves ``true`` as ``TRUE``: never read as "not flagged"."""
    rows = [_row("a.png", 0.9) | {"flagged": "TRUE"}, _row("b.png", 0.1) | {"flagged": "False"}]
    (m,) = validate(rows, {"a.png": "covid", "b.png": "non-covid"}).models
    assert (m.sensitivity.k, m.specificity.k) == (1, 1)
    with pytest.raises(ValidationInputError, match="flagged is 'yes', not true or false"):
        validate([_row("a.png", 0.9) | {"flagged": "yes"}], {"a.png": "covid"})


def test_keys_match_escaped_windows_and_non_utf8_names(tmp_path: Path) -> None:
    rows = [_row("=x.png", 0.9), _row("scans/b.png", 0.1), _row("c_\udce9.png", 0.2)]
    f = tmp_path / "labels.csv"
    # the escaped cell as the results file writes it, a Windows path, a cp1252 byte on disk
    f.write_bytes(
        b"path,label,note\n'=x.png,covid,caf\xe9\nscans\\b.png,non-covid,\nc_\xe9.png,non-covid,\n"
    )
    v = validate(rows, read_labels(f))
    assert v.models[0].n == 3 and v.unlabelled == [] and v.not_in_results == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path;label\na.png;covid\n", "no 'path' or 'label' column"),
        ("file,label\na.png,covid\n", "no 'path' column"),
        ("path,label\na.png,covid\na.png,non-covid\n", "two labels"),
        ("path,label\n,covid\n", "line 2 of the labels file has no path"),
        ("path,label\na.png,\nb.png, \n", "holds no labelled scan"),
        ("path,label\n", "holds no labelled scan"),
        ("", "is empty"),
    ],
)
def test_bad_labels_files(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "labels.csv"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ValidationInputError, match=message):
        read_labels(f)


def test_labels_file_with_bom_spaces_and_extra_columns(tmp_path: Path) -> None:
    f = tmp_path / "labels.csv"
    f.write_text(
        "\ufeffPatient, Path ,Label\nx, a.png , covid\n\ny,b.png,\nz,c.png\n", encoding="utf-8"
    )
    assert read_labels(f) == {"a.png": "covid"}  # b and c: not labelled yet
    with pytest.raises(ValidationInputError, match="cannot be read"):
        read_labels(tmp_path / "absent.csv")


def test_validate_command_on_the_scored_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end: ``lunglens score`` on the bundled samples, then ``lunglens validate``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LUNGLENS_DATA_DIR", str(tmp_path / "data"))
    results = tmp_path / "results.csv"
    assert main(["score", str(SAMPLES), "--out", str(results), "--no-report"]) in (0, 1)
    truth = {
        "ct-covid-covid-ct-ucsd-0001.jpg": "covid",
        "ct-covid-mosmed-0001.jpg": "covid",
        "ct-noncovid-sars-cov-2-ct-0001.jpg": "non-covid",
        "cxr-covid-ieee8023-0401.jpg": "covid",
        "cxr-normal-ieee8023-0006.jpg": "normal",
        "cxr-pneumonia-ieee8023-0036.jpg": "pneumonia",
        "ct-dicom-enhanced-2frames-rle.dcm": "non-covid",  # the BRAIN DICOM: refused
    }
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,label\n" + "".join(f"{SAMPLES / k},{v}\n" for k, v in truth.items()),
        encoding="utf-8",
    )
    capsys.readouterr()
    out_json = tmp_path / "v.json"
    assert main(["validate", str(results), "--labels", str(labels), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    data = json.loads(out_json.read_text(encoding="utf-8"))
    by_model = {m["model"]: m for m in data["models"]}
    assert set(by_model) == {"efficientnet-lite-ct", "efficientnet-lite-cxr"}
    ct, cxr = by_model["efficientnet-lite-ct"], by_model["efficientnet-lite-cxr"]
    assert (ct["n"], cxr["n"]) == (3, 3)
    assert ct["sensitivity"]["n"] == 2 and cxr["specificity"]["n"] == 2
    assert data["not_scored_unrouted"] == {"non-covid": 1}
    assert len(data["unlabelled"]) == 2  # the chest CT DICOM and the X-ray DICOM
    assert "Triage aid only" in data["disclaimer"]
    for m in (ct, cxr):
        assert m["sha256"] and m["version"] and m["auc_low"] is None  # tiny set: no interval
        assert f"{m['model']} {m['version']} (sha256 {m['sha256'][:12]})" in out
        assert m["n_patients"] is None
    # the two CT slices of one patient: the intervals count patients
    with_patients = tmp_path / "patients.csv"
    with_patients.write_text(
        "path,label,patient\n"
        + "".join(
            f"{SAMPLES / k},{v},{'A' if k.startswith('ct-covid') else k}\n"
            for k, v in truth.items()
        ),
        encoding="utf-8",
    )
    assert main(["validate", str(results), "--labels", str(with_patients)]) == 0
    assert "95% intervals by patient: 3 scans of 2 patients" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\n" + f"{SAMPLES / 'cxr-normal-ieee8023-0006.jpg'},healthy\n")
    assert main(["validate", str(results), "--labels", str(bad)]) == 2
    assert "'healthy'" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "none.csv"), "--labels", str(labels)]) == 2
    assert main(["validate", str(results), "--labels", str(labels), "--json", str(results)]) == 2
    assert "would overwrite an input file" in capsys.readouterr().err
    no_dir = tmp_path / "absent" / "v.json"
    assert main(["validate", str(results), "--labels", str(labels), "--json", str(no_dir)]) == 1
    assert "the JSON file cannot be written" in capsys.readouterr().err


def test_json_keeps_names_that_are_not_utf8(tmp_path: Path) -> None:
    from lunglens.cli.validate import write_json

    out = tmp_path / "v.json"
    write_json(out, {"unlabelled": ["a_\udce9.jpg"]})
    assert json.loads(out.read_text(encoding="ascii")) == {"unlabelled": ["a_\udce9.jpg"]}
    assert [p.name for p in tmp_path.iterdir()] == ["v.json"]  # no temporary left


def test_validate_files_refuses_an_empty_results_file(tmp_path: Path) -> None:
    results = tmp_path / "r.csv"
    results.write_text("", encoding="utf-8")
    with pytest.raises(ValidationInputError, match="holds no rows"):
        validate_files(results, tmp_path / "labels.csv")


def test_a_row_the_app_cannot_have_written_is_refused() -> None:
    edited = _row("a.png", 0.9) | {"flagged": "false"}  # P 0.9 over threshold 0.2
    with pytest.raises(ValidationInputError, match="changed after scoring"):
        validate([edited], {"a.png": "covid"})
    # within the cells' rounding (threshold 0.2004 written as 0.200) the flag stands
    edge = _row("b.png", 0.2002) | {"flagged": "false"}
    (m,) = validate([edge], {"b.png": "covid"}).models
    assert m.sensitivity.k == 0


def test_error_rows_keep_any_label_and_are_listed_by_name() -> None:
    """A site-wide labels file on a run with --model NAME: X-rays the CT model refused."""
    rows = [_row("ct.png", 0.9), _row("xr.png", 0.0, status="error")]
    v = validate(rows, {"ct.png": "covid", "xr.png": "pneumonia"})
    assert v.not_scored == ["xr.png"] and v.models[0].not_scored == {"pneumonia": 1}
    assert "No decision for 1 labelled scans (a person must read them): xr.png" in "\n".join(
        summary_lines(v)
    )


def _write_results(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_results_files_spoilt_by_hand_or_spreadsheet_are_refused(tmp_path: Path) -> None:
    from lunglens.report.validation_inputs import read_results

    good = tmp_path / "r.csv"
    _write_results(good, [_row("a.png", 0.9), _row("b.png", 0.1)])
    text = good.read_text(encoding="utf-8")
    semi = tmp_path / "semi.csv"
    semi.write_text(text.replace(",", ";").replace("0.9", "0,9"), encoding="utf-8")
    with pytest.raises(ValidationInputError, match="separated by semicolons"):
        read_results(semi)
    torn = tmp_path / "torn.csv"
    torn.write_text(text + "c.png,ok\n", encoding="utf-8")
    with pytest.raises(ValidationInputError, match=r"1 row\(s\) .*first at line 4"):
        read_results(torn)
    html = tmp_path / "r.html"
    html.write_text("<html></html>", encoding="utf-8")
    with pytest.raises(ValidationInputError, match="HTML report"):
        read_results(html)
    pasted = tmp_path / "pasted.csv"
    pasted.write_text(text + text, encoding="utf-8")  # two runs pasted, header and all
    assert [r["path"] for r in read_results(pasted)] == ["a.png", "b.png", "a.png", "b.png"]
    with pytest.raises(ValidationInputError, match="'threshold', 'p_covid' column, so it is not"):
        bare = tmp_path / "bare.csv"
        bare.write_text("path,status\na.png,ok\n", encoding="utf-8")
        read_results(bare)


def test_labels_with_a_column_twice_or_semicolons(tmp_path: Path) -> None:
    f = tmp_path / "labels.csv"
    f.write_text("path,Label,label\na.png,covid,normal\n", encoding="utf-8")
    with pytest.raises(ValidationInputError, match="'label' twice"):
        read_labels(f)
    f.write_text("path;label\na.png;covid\n", encoding="utf-8")
    with pytest.raises(ValidationInputError, match="separated by semicolons"):
        read_labels(f)


@pytest.mark.parametrize("name", ["efficientnet-lite-ct", "squeezenet-light-ct"])
def test_a_scan_exactly_at_a_shipped_threshold_is_accepted(name: str) -> None:
    """Thresholds 0.0945 and 0.0965 are written 0.095 and 0.097; a P at the threshold is
    written 0.094500 (0.096500) and flagged: a row the app writes, never refused."""
    from lunglens.batch.rows import result_row
    from lunglens.inference.classify import result_from_probs
    from lunglens.models.registry import load_manifest

    info = load_manifest(REPO / "models" / name)
    p = float(np.float32(info.threshold))
    probs = np.array([[p, 1 - p]], np.float32)
    row = result_row(result_from_probs(info, "a.png", probs), "a.png", info, 1.0)
    assert row["flagged"] == "true"
    (m,) = validate([row], {"a.png": "covid"}).models
    assert m.sensitivity.k == 1


def test_a_torn_last_row_and_a_pasted_file_of_other_columns(tmp_path: Path) -> None:
    from lunglens.report.validation_inputs import read_results

    good = tmp_path / "r.csv"
    _write_results(good, [_row("a.png", 0.9), _row("b.png", 0.1)])
    text = good.read_text(encoding="utf-8")
    torn = tmp_path / "torn.csv"
    torn.write_text(text + text.splitlines()[1][:20], encoding="utf-8")  # a run stopped mid-row
    with pytest.raises(ValidationInputError, match=r"stopped while writing it.*--resume"):
        read_results(torn)
    other = tmp_path / "other.csv"
    lines = text.splitlines()
    pasted_header = lines[0].replace("model_sha256", "patient_id")
    other.write_text(text + pasted_header + "\n" + lines[1] + "\n", encoding="utf-8")
    with pytest.raises(ValidationInputError, match="other columns was pasted"):
        read_results(other)


# ---------------------------------------------------------------- intervals by patient


def test_clustered_intervals_reduce_to_the_independent_ones() -> None:
    """One scan per patient: Obuchowski's AUC variance is DeLong's (computed here by brute
    force; with t on n - 1 degrees of freedom) and the clustered Wilson interval is Wilson's."""
    from lunglens.report.statistics import clustered_auc_ci, clustered_wilson_ci, t975

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    s = np.round(rng.normal(y * 0.9, 1.0), 1)  # rounded: ties, counted half
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    auc = psi.mean()
    var = psi.mean(1).var(ddof=1) / len(pos) + psi.mean(0).var(ddof=1) / len(neg)
    lo, hi = clustered_auc_ci(y, s, np.arange(80))
    assert lo == pytest.approx(auc - t975(79) * math.sqrt(var), abs=1e-12)
    assert hi == pytest.approx(auc + t975(79) * math.sqrt(var), abs=1e-12)
    k = np.r_[np.ones(23), np.zeros(17)]
    assert clustered_wilson_ci(k, np.ones(40)) == pytest.approx(wilson_ci(23, 40))


def test_clustered_intervals_count_patients() -> None:
    """Patients whose scans all agree carry one patient's worth of evidence each: the interval
    is the one of the patients, not of the scans; the AUC's agrees with a patient bootstrap."""
    from lunglens.report.statistics import clustered_auc_ci, clustered_wilson_ci, t975

    k = np.array([8, 0, 8, 8, 0, 8, 8, 8, 0, 8])  # 7 of 10 patients, 8 scans each
    n = np.full(10, 8)
    # the 10 patients' interval, made wider by the degrees-of-freedom factor (9 vs 79)
    n_eff = 10 * (t975(79) / t975(9)) ** 2
    assert clustered_wilson_ci(k, n) == pytest.approx(wilson_ci(0.7 * n_eff, n_eff))
    assert wilson_ci(56, 80)[0] > clustered_wilson_ci(k, n)[0] + 0.15  # per scan: too narrow
    # every scan a success: no variance to estimate, each patient counts once
    assert clustered_wilson_ci(np.full(10, 8), n) == pytest.approx(wilson_ci(10, 10))
    # patients with equal proportions: the variance is 0 exactly (not a rounding residue), so
    # every scan counts, times the factor; the same for any such proportion
    for hits, size in ((5, 10), (15, 22), (1, 3)):
        got = clustered_wilson_ci(np.full(3, hits), np.full(3, size))
        n_eff = 3 * size * (t975(3 * size - 1) / t975(2)) ** 2
        assert got == pytest.approx(wilson_ci(hits / size * n_eff, n_eff))

    rng = np.random.default_rng(0)
    cluster = np.repeat(np.arange(30), 6)
    y = np.repeat(rng.integers(0, 2, 30), 6)
    s = np.repeat(rng.normal(0, 1, 30), 6) + 0.8 * y + rng.normal(0, 0.1, 180)
    lo, hi = clustered_auc_ci(y, s, cluster)
    boot = []
    for _ in range(2000):
        pick = rng.integers(0, 30, 30)
        idx = np.concatenate([np.flatnonzero(cluster == c) for c in pick])
        boot.append(roc_auc(y[idx], s[idx]))
    sd = np.nanstd(boot)
    assert (hi - lo) / (2 * 1.96) == pytest.approx(sd, rel=0.2)
    independent = clustered_auc_ci(y, s, np.arange(180))
    assert (hi - lo) > 1.8 * (independent[1] - independent[0])
    assert all(math.isnan(v) for v in clustered_auc_ci(y[:12], s[:12], cluster[:12]))
    # two identical patients holding both classes: a variance of 0 gives no interval
    twin = np.array([0.2, 0.7, 0.2, 0.7])
    got = clustered_auc_ci(np.array([1, 0, 1, 0]), twin, np.array([0, 0, 1, 1]))
    assert all(math.isnan(v) for v in got)


def test_a_patient_column_makes_the_intervals_count_patients(tmp_path: Path) -> None:
    """12 patients, 5 slices each, all five scored alike: by patient the intervals are about
    those of 12 scans; a patient left empty is one of its own; the summary says which."""
    rng = np.random.default_rng(3)
    rows, lines = [], ["path,label,patient"]
    for pat in range(12):
        covid = pat < 6
        p = float(rng.uniform(0.3, 1.0) if covid else rng.uniform(0.0, 0.6))
        for sl in range(5):
            name = f"p{pat}/s{sl}.png"
            rows.append(_row(name, p + sl * 1e-4))
            lines.append(f"{name},{'covid' if covid else 'non-covid'},{'' if pat == 11 else pat}")
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    from lunglens.report.validation_inputs import read_labels_and_patients

    labels, patients = read_labels_and_patients(labels_csv)
    assert patients is not None and len(patients) == 55 and patients["p0/s0.png"] == "0"
    (by_scan,) = validate(rows, labels).models
    (by_patient,) = validate(rows, labels, patients).models
    assert by_scan.n_patients is None and by_patient.n_patients == 12 + 4  # 4 more: pat 11
    for name in ("sensitivity", "specificity", "accuracy"):
        a, b = getattr(by_scan, name), getattr(by_patient, name)
        assert (a.k, a.n, a.value) == (b.k, b.n, b.value)  # same counts, wider intervals
        assert b.high - b.low > a.high - a.low or a.value in (0.0, 1.0)
    text = "\n".join(summary_lines(validate(rows, labels, patients)))
    assert "95% intervals by patient: 60 scans of 16 patients" in text
    assert "with under 20 patients the AUC's interval is too narrow" in text
    assert "treat the 60 scans as independent" in "\n".join(summary_lines(validate(rows, labels)))


def test_intervals_by_patient_only_where_this_run_names_patients() -> None:
    """A site-wide labels file may name patients for other runs only: this run's intervals
    stay by scan. With 12 COVID scans of one patient the AUC has no interval, and says why."""
    rng = np.random.default_rng(5)
    p = np.r_[rng.uniform(0.2, 1.0, 12), rng.uniform(0.0, 0.8, 12)]
    rows = [_row(f"s{i}.png", float(x)) for i, x in enumerate(p)]
    labels = {f"s{i}.png": "covid" if i < 12 else "non-covid" for i in range(24)}
    (m,) = validate(rows, labels, {"other-run.png": "P1"}).models
    assert m.n_patients is None and not math.isnan(m.auc_low)  # Hanley-McNeil, by scan
    one = {f"s{i}.png": "P1" for i in range(12)}  # the 12 COVID scans: one patient
    v = validate(rows, labels, one)
    (m,) = v.models
    assert m.n_patients == 13 and math.isnan(m.auc_low) and 0 < m.auc < 1
    assert "no interval: too few patients of a class" in "\n".join(summary_lines(v))


def test_patient_column_refusals(tmp_path: Path) -> None:
    from lunglens.report.validation_inputs import read_labels_and_patients

    bad = tmp_path / "labels.csv"
    bad.write_text("path,label,patient\na.png,covid,1\na.png,covid,2\n", encoding="utf-8")
    with pytest.raises(ValidationInputError, match="two patients: '1' and '2'"):
        read_labels_and_patients(bad)
    bad.write_text("path,label,patient,Patient ID\na.png,covid,1,1\n", encoding="utf-8")
    with pytest.raises(ValidationInputError, match="'patient' twice"):
        read_labels_and_patients(bad)
    # a worklist's spelling of the column is the patient column, not ignored
    for name in ("Patient ID", "patient_id", "PatientID"):
        bad.write_text(f"Path,Label,{name}\na.png,covid,P1\n", encoding="utf-8")
        assert read_labels_and_patients(bad) == ({"a.png": "covid"}, {"a.png": "P1"})
    empty = tmp_path / "empty.csv"  # a column left empty: as without it
    empty.write_text("path,label,patient\na.png,covid,\nb.png,non-covid\n", encoding="utf-8")
    assert read_labels_and_patients(empty) == ({"a.png": "covid", "b.png": "non-covid"}, None)
