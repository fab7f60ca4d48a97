"""The ``lunglens.cli`` package: entry points, parser assembly and its commands' helpers."""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from lunglens import __version__, cli
from lunglens.cli import classify, demo, desktop, models, parser, score, validate

REPO = Path(__file__).resolve().parents[1]


def test_console_script_and_module_entry_points_run_main() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    module, _, attr = scripts["lunglens"].partition(":")
    assert getattr(importlib.import_module(module), attr) is cli.main
    proc = subprocess.run(
        [sys.executable, "-m", "lunglens", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"lunglens {__version__}"


def test_each_command_module_registers_its_command() -> None:
    sub = next(a for a in parser.build_parser()._actions if a.dest == "command")
    commands = {name: p.get_default("func") for name, p in sub.choices.items()}  # type: ignore[union-attr]
    assert list(commands) == ["gui", "classify", "score", "validate", "models", "demo", "selftest"]
    assert commands["gui"] is desktop.cmd_gui
    assert commands["classify"] is classify.cmd_classify
    assert commands["score"] is score.cmd_score
    assert commands["validate"] is validate.cmd_validate
    assert commands["models"] is models.cmd_models
    assert commands["demo"] is demo.cmd_demo


def test_progress_line_off_a_terminal_writes_once_per_tenth() -> None:
    stream = io.StringIO()  # not a tty: one line per 10 %, never a carriage return
    bar = score.ProgressLine(stream)
    for done in range(1, 201):
        bar.update(done, 200, rate=4.0, eta=(200 - done) / 4.0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11  # the first update (0 %), then 10 %, 20 %, ..., 100 %
    assert lines[0] == "1/200 scans (0%), 4.0/s" and lines[-1] == "200/200 scans (100%), 4.0/s"
    assert "\r" not in stream.getvalue()


def test_sample_labels_read_the_license_table(tmp_path: Path) -> None:
    (tmp_path / "LICENSE.md").write_text(
        "| file | kind | label | source |\n|---|---|---|---|\n"
        "| `cxr-normal-1.jpg` | chest X-ray | normal (No Finding) | ieee8023 |\n"
        "| not a file | x | y | z |\n",
        encoding="utf-8",
    )
    assert demo.sample_labels(tmp_path) == {"cxr-normal-1.jpg": "normal (No Finding)"}
    assert demo.sample_labels(tmp_path / "missing") == {}


def test_every_shipped_sample_has_a_known_label() -> None:
    samples = REPO / "resources" / "samples"
    if not samples.is_dir():
        pytest.skip("no resources/samples in this checkout")
    labels = demo.sample_labels(samples)
    files = [p.name for p in samples.iterdir() if p.is_file() and p.suffix != ".md"]
    assert files and [f for f in files if f not in labels] == []
