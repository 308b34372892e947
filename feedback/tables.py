"""The tables a dataset version holds, built and compared as plain rows.

Layout, readable by Oxen's own tools and like its human-feedback example:
``images/`` with every rated image, ``train.csv`` (prompt,path,rating,...), ``votes.csv``
(the raw votes) and ``instance.csv`` (the selected instance images).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TRAIN_TABLE = "train.csv"
VOTES_TABLE = "votes.csv"
INSTANCE_TABLE = "instance.csv"
IMAGES_FOLDER = "images"

TRAIN_COLUMNS = [
    "prompt",
    "path",
    "rating",
    "accepts",
    "rejects",
    "score",
    "selected",
    "reason",
    "candidate_id",
    "source_name",
    "round",
]
VOTES_COLUMNS = ["candidate_id", "path", "rater", "vote", "time", "round"]
INSTANCE_COLUMNS = ["path", "prompt", "score", "candidate_id", "source_name"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> str:
    """Text a spreadsheet would run as a formula gets a leading apostrophe; numbers stay numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def unsafe_cell(text: str) -> str:
    """Undo safe_cell for text read back from a table herdbook wrote."""
    if text.startswith("'") and text[1:].startswith(FORMULA_STARTS):
        return text[1:]
    return text


def to_csv(columns: Sequence[str], rows: Iterable[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: safe_cell(row.get(column)) for column in columns})
    return buffer.getvalue()


def from_csv(text: str) -> list[dict[str, str]]:
    return [{k: unsafe_cell(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def rating_word(outcome: str) -> str:
    """Oxen's feedback example says good/bad."""
    return {"accepted": "good", "rejected": "bad"}.get(outcome, outcome)


@dataclass
class TableDiff:
    added: list[dict] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)
    rating_changed: list[tuple[dict, dict]] = field(default_factory=list)
    selected_added: list[dict] = field(default_factory=list)
    selected_removed: list[dict] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.rating_changed or self.selected_added or self.selected_removed)

    def summary(self) -> str:
        parts = [
            f"+{len(self.added)} images",
            f"-{len(self.removed)} images",
            f"{len(self.rating_changed)} ratings changed",
        ]
        parts.append(f"selection +{len(self.selected_added)}/-{len(self.selected_removed)}")
        return ", ".join(parts)

    def changes(self) -> list[dict]:
        """One row per change as a person reads it: which candidate, what it was, what it is now."""

        def tally(row: dict) -> str:
            return f"{row['rating']} ({row['accepts']} accept, {row['rejects']} reject)"

        def change(what: str, row: dict, before: str = "", after: str = "") -> dict:
            number = str(row.get("candidate_id", ""))
            return {
                "change": what,
                "candidate_id": int(number) if number.isdigit() else None,
                "source_name": row.get("source_name") or row["path"],
                "prompt": row.get("prompt", ""),
                "before": before,
                "after": after,
            }

        return [
            *(change("added", row, after=tally(row)) for row in self.added),
            *(change("removed", row, before=tally(row)) for row in self.removed),
            *(change("rating changed", new, tally(old), tally(new)) for old, new in self.rating_changed),
            *(
                change("entered the selection", row, after=f"score {row.get('score', '?')}")
                for row in self.selected_added
            ),
            *(change("left the selection", row, after=row.get("reason", "")) for row in self.selected_removed),
        ]


def diff_train_tables(old: list[dict], new: list[dict]) -> TableDiff:
    """What changed between two versions' train.csv rows, keyed by image path."""
    before = {row["path"]: row for row in old}
    after = {row["path"]: row for row in new}
    result = TableDiff()
    result.added = [after[p] for p in after if p not in before]
    result.removed = [before[p] for p in before if p not in after]
    for path in before.keys() & after.keys():
        a, b = before[path], after[path]
        if (a["rating"], a["accepts"], a["rejects"]) != (b["rating"], b["accepts"], b["rejects"]):
            result.rating_changed.append((a, b))
        if a.get("selected") != b.get("selected"):
            (result.selected_added if b.get("selected") == "true" else result.selected_removed).append(b)
    for row in result.added:
        if row.get("selected") == "true":
            result.selected_added.append(row)
    for row in result.removed:
        if row.get("selected") == "true":
            result.selected_removed.append(row)
    result.rating_changed.sort(key=lambda pair: pair[1]["path"])
    return result
