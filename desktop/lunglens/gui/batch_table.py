"""The batch panel's results table: one line per scan, ranked most suspicious first.

Rows are the results CSV's rows (:mod:`lunglens.batch`) as they are written; the table sorts
by the positive probability, highest on top, with errors (no probability) last. Flagged rows are
tinted red and error rows grey, so the ranking reads at a glance; an error row says why it was
not scored in its Triage cell.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSortFilterProxyModel, Qt
from PySide6.QtGui import QBrush, QColor, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView, QWidget

from lunglens.batch.results_csv import error_message
from lunglens.inference import format_prob
from lunglens.io import SourceKey
from lunglens.io.key import SEPARATOR
from lunglens.models import ModelInfo

SORT_ROLE = Qt.ItemDataRole.UserRole + 1
KEY_ROLE = Qt.ItemDataRole.UserRole + 2
FLAGGED_BRUSH = QBrush(QColor(255, 214, 214))
ERROR_BRUSH = QBrush(QColor(235, 235, 235))
#: Characters of a SeriesInstanceUID shown after the folder name (the tail tells series apart).
UID_TAIL = 8


def short_key(key: str) -> str:
    """Display name of a results key: the file name, or ``folder#…uid-tail`` for a series."""
    parsed = SourceKey.parse(key)
    if parsed.part is None:
        return parsed.name
    return f"{parsed.name}{SEPARATOR}…{parsed.part[-UID_TAIL:]}"


def not_scored_text(error: str, path: str = "") -> str:
    """Triage cell of an error row: ``Not scored - <reason>``, the reason without its code and
    without the scan's own path (both stay in the Error column; the Scan column names it)."""
    reason = error_message(error)
    reason = reason.removeprefix(f"{path}: ") if path else reason
    return f"Not scored - {reason or 'no reason recorded'}"


def result_columns(models: list[ModelInfo]) -> list[tuple[str, str]]:
    """``(CSV column, title)`` of the table: one probability column per positive label."""
    positives = list(dict.fromkeys(m.positive_label for m in models)) or ["covid"]
    return [
        ("path", "Scan"),
        *((f"p_{pos}", f"P({pos})") for pos in positives),
        ("prediction", "Triage"),
        ("threshold", "Threshold"),
        ("model", "Model"),
        ("status", "Status"),
        ("n_slices", "Slices"),
        ("elapsed_ms", "ms"),
        ("error", "Error"),
        ("notes", "Notes"),  # e.g. a series scored without a slice it could not read
    ]


def row_items(row: dict[str, str], columns: list[tuple[str, str]]) -> list[QStandardItem]:
    """The cells of one CSV row: shown text, sort value (numbers sort as numbers, errors last),
    the row's key for double-click, and the flagged/error tint."""
    key = row.get("path", "")
    flagged = row.get("flagged") == "true"
    error = row.get("status") != "ok"
    items: list[QStandardItem] = []
    for col, _title in columns:
        value = row.get(col, "")
        sort_value: Any = value
        text = value
        if col == "path":
            text = short_key(value)
        elif col == "model" and value:
            # the version tells two builds of one model apart; the hash is in the tooltip
            version = row.get("model_version", "")
            text = f"{value} v{version}" if version else value
            value = f"{text}\nSHA-256 {row.get('model_sha256', '')}"
        elif col == "prediction" and error:
            # the reason where the decision would be: the Error column is off screen on a
            # laptop, and an empty Triage cell reads as "nothing to see"
            text = value = not_scored_text(row.get("error", ""), key)
        elif col.startswith("p_") or col in ("elapsed_ms", "n_slices"):
            try:
                sort_value = float(value)
                text = format_prob(sort_value) if col.startswith("p_") else value
            except ValueError:
                sort_value = -1.0  # errors (and other models' classes) rank last
        item = QStandardItem(text)
        item.setData(sort_value, SORT_ROLE)
        item.setData(key, KEY_ROLE)
        item.setToolTip(value if col in ("path", "error", "notes", "prediction", "model") else text)
        if flagged:
            item.setBackground(FLAGGED_BRUSH)
        elif error:
            item.setBackground(ERROR_BRUSH)
        items.append(item)
    return items


class ResultsTable(QTableView):
    """Sortable table of result rows over a :class:`QStandardItemModel` (:attr:`source`)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.columns: list[tuple[str, str]] = []
        self.source = QStandardItemModel(0, 0, self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.source)
        self.proxy.setSortRole(SORT_ROLE)
        self.setModel(self.proxy)
        self.setSortingEnabled(True)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setAlternatingRowColors(False)
        self.setWordWrap(False)  # one line per scan: more of the ranking in view
        self.verticalHeader().setVisible(False)
        self.horizontalHeader().setStretchLastSection(True)
        self.setToolTip(
            "Most suspicious first (highest P on top, errors last); click a header to sort "
            "otherwise. Double-click a row to open the scan in the viewer"
        )

    def set_columns(self, models: list[ModelInfo]) -> None:
        """Columns for a run with ``models``, ranked by the first positive probability."""
        self.columns = result_columns(models)
        self.source.setColumnCount(len(self.columns))
        self.source.setHorizontalHeaderLabels([title for _k, title in self.columns])
        header = self.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.setColumnWidth(0, 220)
        self.setColumnWidth(self.column("prediction"), 570)  # with "; most probable: ..."
        self.setColumnWidth(self.column("model"), 190)  # "efficientnet-lite-cxr v1.1.1"
        self.sortByColumn(self.column(self.columns[1][0]), Qt.SortOrder.DescendingOrder)

    def column(self, key: str) -> int:
        """Index of the column showing CSV column ``key`` (``-1`` when not shown)."""
        keys = [k for k, _t in self.columns]
        return keys.index(key) if key in keys else -1

    def append_rows(self, rows: list[dict[str, str]]) -> None:
        """Add CSV rows; the table is sorted once after them, not once per row."""
        self.setSortingEnabled(False)
        for row in rows:
            self.source.appendRow(row_items(row, self.columns))
        self.setSortingEnabled(True)  # re-applies the current (ranked) sort

    def clear_rows(self) -> None:
        self.source.removeRows(0, self.source.rowCount())

    def row_keys(self) -> list[str]:
        """The results key of every row, in insertion order."""
        return [str(self.source.item(r, 0).data(KEY_ROLE)) for r in range(self.source.rowCount())]
