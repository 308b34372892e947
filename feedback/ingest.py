"""``herdbook import``: images from a folder, with prompts and ratings from an optional CSV."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herdbook.db.models import Candidate, VoteValue
from herdbook.feedback.errors import ImportProblem
from herdbook.feedback.images import IMAGE_SUFFIXES, MAX_PIXELS, check_image, store_image
from herdbook.feedback.votes import cast_vote
from sqlalchemy import select
from sqlalchemy.orm import Session

RATING_WORDS = {
    VoteValue.accept: {"good", "accept", "accepted", "yes", "y", "1", "true", "+1", "👍", "up", "keep"},
    VoteValue.reject: {"bad", "reject", "rejected", "no", "n", "0", "false", "-1", "👎", "down"},
    VoteValue.skip: {"skip", "skipped", "unsure", "?"},
}
# herdbook's own train.csv says "tied" where accepts and rejects are level: no verdict, no vote
NO_VERDICT_WORDS = {"tied", "tie", "unrated", "none"}
KNOWN_COLUMNS = {"file", "path", "prompt", "negative_prompt", "seed", "rating"}


def parse_rating(text: str) -> VoteValue | None:
    """good/bad, accept/reject, 1/0, 👍/👎 and friends; empty means no vote."""
    word = text.strip().lower()
    if not word or word in NO_VERDICT_WORDS:
        return None
    for value, words in RATING_WORDS.items():
        if word in words:
            return value
    raise ImportProblem(f"rating {text!r} is not one of good/bad, accept/reject, 1/0, 👍/👎, skip")


@dataclass
class ImportRow:
    """One image to import, as read from the folder or the CSV."""

    name: str  # as the user wrote it: relative to the folder
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    seed_text: str = ""  # as written, when it is no seed a generator takes (checked at import)
    rating: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    prompts_corrected: list[str] = field(default_factory=list)
    votes: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def rows_from_folder(folder: Path) -> list[ImportRow]:
    names = sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return [ImportRow(name) for name in names]


def rows_from_csv(csv_path: Path) -> list[ImportRow]:
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            lines = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ImportProblem(f"{csv_path}: cannot read the table ({error})") from error
    file_column = "file" if "file" in columns else "path" if "path" in columns else None
    missing = ([] if file_column else ["file (or path)"]) + ([] if "prompt" in columns else ["prompt"])
    if missing:
        raise ImportProblem(
            f"{csv_path}: the table needs the column(s) {', '.join(missing)}; it has {', '.join(columns) or 'none'}"
        )
    rows = []
    for line in lines:
        line = {(k or "").strip(): (v or "") for k, v in line.items()}
        seed_text = line.get("seed", "").strip()
        rows.append(
            ImportRow(
                name=line[file_column].strip(),
                prompt=line.get("prompt", "").strip(),
                negative_prompt=line.get("negative_prompt", "").strip(),
                seed=int(seed_text) if seed_text.isdigit() and int(seed_text) < 2**63 else None,
                seed_text="" if not seed_text or (seed_text.isdigit() and int(seed_text) < 2**63) else seed_text,
                rating=line.get("rating", ""),
                extra={k: v for k, v in line.items() if k and k not in KNOWN_COLUMNS},
            )
        )
    return rows


def _inside(folder: Path, name: str) -> Path:
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ImportProblem(f"the path leaves {folder}")
    return path


def import_images(
    session: Session,
    folder: Path,
    candidates_dir: Path,
    home_root: Path,
    rows: Iterable[ImportRow],
    rater: str | None = None,
    max_pixels: int = MAX_PIXELS,
    progress=lambda done, total: None,
    checkpoint=lambda: None,
    batch: int = 200,
) -> ImportReport:
    """Check every row, store the good images and record them (and their votes) in ``session``.

    A bad row is reported and skipped; it never stops the others. Image files are written
    content-addressed before the rows, so a failed transaction leaves only unreferenced
    copies of bytes, never a changed candidate.

    An image the table lists again with a rating is another vote: Oxen's feedback app saves
    an image anew each time it is voted on, without saying by whom, so the n-th rating of an
    image counts as rater ``NAME-n``.

    ``checkpoint`` is called every ``batch`` rows; a caller that commits there keeps the write
    lock for a batch at a time, so votes go on during a big import (a killed import keeps its
    committed batches, and running it again adds the rest)."""
    rows = list(rows)
    report = ImportReport()
    if rater is None and any(row.rating.strip() for row in rows):
        raise ImportProblem("the table has ratings: say whose they are with --rater NAME")
    seen: dict[str, str] = {}
    ratings_seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        progress(index, len(rows))
        if index and index % batch == 0:
            checkpoint()  # the caller commits what is done: no lock held for a whole big import
        try:
            if row.seed_text:
                raise ImportProblem(f"seed {row.seed_text[:30]!r} is not a whole number from 0 to 2^63-1")
            checked = check_image(_inside(folder, row.name), max_pixels)
            vote = parse_rating(row.rating)
        except ImportProblem as problem:
            report.problems.append((row.name, str(problem)))
            continue
        if checked.sha256 in seen and vote is None:
            report.problems.append((row.name, f"the same image as {seen[checked.sha256]}, imported once"))
            continue
        seen.setdefault(checked.sha256, row.name)
        candidate = session.scalars(select(Candidate).where(Candidate.sha256 == checked.sha256)).one_or_none()
        if candidate is None:
            stored = store_image(checked, candidates_dir)
            candidate = Candidate(
                sha256=checked.sha256,
                path=str(stored.relative_to(home_root)),
                source_name=row.name,
                prompt=row.prompt,
                negative_prompt=row.negative_prompt,
                seed=row.seed,
                generation={},
                extra=row.extra,
                width=checked.width,
                height=checked.height,
                phash=checked.phash,
            )
            session.add(candidate)
            session.flush()
            report.added.append(row.name)
        else:
            report.already_present.append(row.name)
            if row.prompt and row.prompt != candidate.prompt:  # a later table corrects the prompt
                candidate.prompt = row.prompt
                report.prompts_corrected.append(row.name)
        if vote is not None and rater is not None:
            ratings_seen[checked.sha256] = nth = ratings_seen.get(checked.sha256, 0) + 1
            cast_vote(session, candidate.id, rater if nth == 1 else f"{rater}-{nth}", vote)
            report.votes += 1
    progress(len(rows), len(rows))
    return report
