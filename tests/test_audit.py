"""The audit log module (:mod:`lunglens.audit`) and its place below the batch and report layers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lunglens import audit

DESKTOP = Path(__file__).resolve().parents[1] / "desktop"


def test_append_writes_one_json_line_per_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(audit.DATA_ENV, str(tmp_path / "data"))
    assert audit.data_dir() == tmp_path / "data"
    first = audit.append_audit("classify", {"input": "a.png", "n_slices": 1})
    second = audit.append_audit("score", {"inputs": ["x", "y"], "ok": 2})
    assert first == second == audit.audit_path() == tmp_path / "data" / audit.AUDIT_FILE
    lines = [json.loads(x) for x in audit.audit_path().read_text(encoding="utf-8").splitlines()]
    assert [x["event"] for x in lines] == ["classify", "score"]
    assert lines[0]["input"] == "a.png" and lines[1]["inputs"] == ["x", "y"]
    assert lines[1]["at"].endswith("+00:00")  # UTC, to the second


def test_a_folder_that_cannot_be_written_is_a_warning_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(audit.DATA_ENV, str(blocker / "data"))  # mkdir under a file fails
    with caplog.at_level(logging.WARNING, logger="lunglens.audit"):
        assert audit.append_audit("score", {"ok": 1}) is None
    assert "could not write the audit log" in caplog.text


def test_a_path_that_is_not_utf8_stays_one_json_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(audit.DATA_ENV, str(tmp_path))
    name = os.fsdecode(b"scan-\xe9.png")  # Latin-1 byte read with surrogateescape
    audit.append_audit("classify", {"input": name})
    text = audit.audit_path().read_text(encoding="utf-8")
    assert "\\udce9" in text  # the JSON escape of the surrogate, so the line parses ...
    assert json.loads(text)["input"] == name  # ... back to the same string


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("lunglens.audit", "lunglens."),  # below every layer: imports nothing of LungLens
        ("lunglens.batch", "lunglens.report"),  # batch sits below report
    ],
)
def test_lower_layers_do_not_load_higher_ones(module: str, forbidden: str) -> None:
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(sorted(m for m in sys.modules if m.startswith({forbidden!r}) and "
        f"not m.startswith({module!r})))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(DESKTOP)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
