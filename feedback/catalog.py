"""Read-side queries: candidates with their vote counts, and the project's totals."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import and_, case, distinct, func, select
from sqlalchemy.orm import Session

from db.models import Candidate, DatasetVersion, Rater, Round, Vote, VoteValue
from feedback.scoring import Tally, score, verdict


@dataclass(frozen=True)
class CandidateRow:
    id: int
    source_name: str
    prompt: str
    round: int | None
    path: str
    accepts: int
    rejects: int
    skips: int
    score: float

    def as_dict(self) -> dict:
        return asdict(self)


def _tally_columns():
    def count(value: VoteValue):
        return func.coalesce(func.sum(case((Vote.value == value, 1), else_=0)), 0)

    return count(VoteValue.accept), count(VoteValue.reject), count(VoteValue.skip)


def list_candidates(
    session: Session, unrated_by: str | None = None, ids: list[int] | None = None
) -> list[CandidateRow]:
    accepts, rejects, skips = _tally_columns()
    query = (
        select(
            Candidate.id,
            Candidate.source_name,
            Candidate.prompt,
            Candidate.round_id,
            Candidate.path,
            accepts,
            rejects,
            skips,
        )
        .outerjoin(Vote, and_(Vote.candidate_id == Candidate.id, Vote.is_current))
        .group_by(Candidate.id)
        .order_by(Candidate.id)
    )
    if unrated_by is not None:
        voted = select(Vote.candidate_id).join(Rater).where(Rater.name == unrated_by, Vote.is_current).scalar_subquery()
        query = query.where(Candidate.id.not_in(voted))
    if ids is not None:
        query = query.where(Candidate.id.in_(ids))
    rows = []
    for cid, name, prompt, round_id, path, a, r, s in session.execute(query):
        rows.append(CandidateRow(cid, name, prompt, round_id, path, a, r, s, round(score(Tally(a, r, s)), 4)))
    return rows


def tallies(session: Session) -> dict[int, Tally]:
    """Current vote counts per candidate that has any vote."""
    accepts, rejects, skips = _tally_columns()
    query = select(Vote.candidate_id, accepts, rejects, skips).where(Vote.is_current).group_by(Vote.candidate_id)
    return {cid: Tally(a, r, s) for cid, a, r, s in session.execute(query)}


def status(session: Session) -> dict[str, int]:
    counts = tallies(session)
    verdicts = [verdict(t) for t in counts.values()]
    decisive = [Vote.is_current, Vote.value != VoteValue.skip]
    return {
        "candidates": session.scalar(select(func.count(Candidate.id))) or 0,
        "rated": sum(1 for t in counts.values() if t.decisive),
        "accepted": verdicts.count("accepted"),
        "rejected": verdicts.count("rejected"),
        "votes": session.scalar(select(func.count(Vote.id)).where(*decisive)) or 0,
        "raters": session.scalar(select(func.count(distinct(Vote.rater_id))).where(*decisive)) or 0,
        "rounds": session.scalar(select(func.count(Round.id))) or 0,
        "dataset_versions": session.scalar(select(func.count(DatasetVersion.id))) or 0,
    }
