"""``docs/`` stays in step with the code it documents (the repository stands alone).

Each test reads the names from the code (columns, commands, exit codes, manifest fields,
import contracts) and fails when a page does not mention one, so adding a column or a command
without documenting it breaks the build.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lunglens import cli
from lunglens.batch import results_csv
from lunglens.models import manifest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _table_keys(text: str) -> set[str]:
    """The backquoted names in the first cell of each table row."""
    keys: set[str] = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            keys.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return keys


def test_every_results_column_is_documented() -> None:
    keys = _table_keys(_page("results-csv.md"))
    code = [*results_csv.HEAD_COLUMNS, "p_<label>", *results_csv.TAIL_COLUMNS]
    code += list(results_csv.ID_COLUMNS)
    assert [c for c in code if c not in keys] == []
    assert results_csv.columns(["a", "b"], include_ids=True) == [
        *results_csv.HEAD_COLUMNS,
        "p_a",
        "p_b",
        *results_csv.TAIL_COLUMNS,
        *results_csv.ID_COLUMNS,
    ], "the page documents this order"


def test_every_command_option_and_exit_code_is_documented() -> None:
    text = _page("cli.md")
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, sp in sub.choices.items():  # type: ignore[union-attr]
        assert f"lunglens {name}" in text, name
        for action in sp._actions:
            for opt in action.option_strings:
                assert opt in text or opt in ("-h", "--help"), f"{name} {opt}"
    for opt in ("--models-dir", "--debug", "--version"):
        assert opt in text
    codes = {v for k, v in vars(cli).items() if k.startswith("EXIT_")}
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", text, flags=re.MULTILINE)}
    assert documented == codes


def test_every_training_option_is_documented() -> None:
    pytest.importorskip("torch")
    from lunglens.training.cli import build_parser

    text = _page("training.md")
    options = [o for a in build_parser()._actions for o in a.option_strings]
    assert "--stages" in options
    assert [o for o in options if f"`{o}`" not in text and o not in ("-h", "--help")] == []


def test_every_manifest_field_is_documented() -> None:
    rows = _table_keys(_page("model-contract.md"))
    # "input.size" documents the block "input" and its key "size"; "resize" stands alone in the
    # row of "input.name" and the other documentation keys.
    keys = rows | {k.split(".", 1)[0] for k in rows}
    documented = rows | {k.split(".", 1)[1] for k in rows if "." in k}
    assert [k for k in manifest.REQUIRED if k not in keys] == []
    manifests = sorted((REPO / "models").glob("*/manifest.json"))
    if not manifests:
        pytest.skip("no model in models/")
    for path in manifests:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert [k for k in data if k not in keys] == [], path
        for block in ("input", "outputs"):
            assert [k for k in data[block] if k not in documented] == [], (path, block)


def test_import_contracts_are_documented() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    text = _page("architecture.md")
    for contract in config["tool"]["importlinter"]["contracts"]:
        assert contract["name"] in text


def test_docs_are_linked_and_nothing_cites_the_old_design_file() -> None:
    index = _page("README.md")
    for page in DOCS.glob("*.md"):
        assert page.name == "README.md" or f"({page.name})" in index, page.name
    assert "docs/" in (REPO / "README.md").read_text(encoding="utf-8")
    old = "DESIGN" + ".md"  # the design file outside the repository (not this line)
    stale = [
        str(p.relative_to(REPO))
        for folder in ("desktop", "tests", "benchmarks", "packaging")
        for p in (REPO / folder).rglob("*.py")
        if old in p.read_text(encoding="utf-8")
    ]
    assert stale == []


def test_threshold_column_names_the_series_threshold() -> None:
    """Series rows carry ``series_aggregation.threshold`` (lunglens.batch.rows.result_row); the
    page used to say every row carries the manifest ``threshold``."""
    row = next(
        line for line in _page("results-csv.md").splitlines() if line.startswith("| `threshold`")
    )
    assert "`series_aggregation.threshold`" in row and "`n_slices`" in row
