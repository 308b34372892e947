"""Recording votes: one current vote per rater and image, every earlier vote kept as history."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from herdbook.db.access import NAME_PATTERN
from herdbook.db.errors import HerdbookError, NotFound
from herdbook.db.models import Candidate, Rater, User, Vote, VoteValue, utcnow
from herdbook.feedback.queueing import (
    DEFAULT_POLICY,
    POLICIES,
    QueueEntry,
    Votes,
    hash_array,
    next_for,
    rank,
    source_array,
)
from herdbook.feedback.selection import SelectionPolicy
from sqlalchemy import case, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

ACTIVE_RATER_WINDOW = timedelta(minutes=15)  # raters who voted this recently share out the queue
RECENT_VOTES = 5_000  # ...looked for among this many newest votes (the primary key's index, not a scan)

MAX_RATER_NAME = 64
CONFLICT_RETRIES = 5  # a vote raced by its twin from another tab is tried again this often


def new_rater_name(name: str) -> str:
    """A name for a new rater, checked: what is shown in tables, logs and the URL's ?rater=."""
    cleaned = clean_rater_name(name)
    if not NAME_PATTERN.fullmatch(cleaned):
        raise HerdbookError(
            f"{cleaned!r} is not a rater name: use letters, digits, spaces and . ' @ + - _ (starting with a letter or digit)"
        )
    return cleaned


def clean_rater_name(name: str) -> str:
    cleaned = " ".join((name or "").split())
    if not cleaned:
        raise HerdbookError("a rater needs a name")
    if len(cleaned) > MAX_RATER_NAME:
        raise HerdbookError(f"a rater's name is at most {MAX_RATER_NAME} characters")
    return cleaned


def named(rater_name: str):
    """The condition that picks a rater by name, whatever its case: "Alice" and "alice" are
    one rater (the name keeps the case it was first written in)."""
    return func.lower(Rater.name) == clean_rater_name(rater_name).lower()


def rater_by_name(session: Session, name: str, create: bool = True) -> Rater:
    """The rater of that name; made on first use, race-free: two tabs casting a new rater's
    first votes at once both get the one row (insert-or-ignore, then read), on SQLite and
    Postgres alike."""
    name = clean_rater_name(name)
    rater = session.scalars(select(Rater).where(named(name)).order_by(Rater.id).limit(1)).one_or_none()
    if rater is None:
        if not create:
            raise NotFound(f"no rater named {name!r}")
        name = new_rater_name(name)
        session.execute(_insert_or_ignore(session, Rater, name=name, created_at=utcnow()))
        rater = session.scalars(select(Rater).where(named(name)).order_by(Rater.id).limit(1)).one()
    return rater


def locked(session: Session, rater: Rater) -> Rater:
    """The rater, with their row locked until the transaction ends, so one rater's votes from
    several tabs are taken one after the other. On Postgres two tabs voting on one image at
    once otherwise both demote the old vote and both insert a current one (uq_votes_current);
    SQLite has one writer at a time anyway and renders no lock."""
    session.execute(select(Rater.id).where(Rater.id == rater.id).with_for_update())
    return rater


def _insert_or_ignore(session: Session, table, **values):
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:  # any other database: a plain insert, which a concurrent twin may still collide with
        from sqlalchemy import insert

        return insert(table).values(**values)
    return insert(table).values(**values).on_conflict_do_nothing()


def cast_vote(session: Session, candidate_id: int, rater_name: str, value: VoteValue | str) -> Vote:
    """Make ``value`` this rater's current vote on the candidate; the previous one becomes history."""
    value = VoteValue(value)
    if session.get(Candidate, candidate_id) is None:
        raise NotFound(f"no candidate with id {candidate_id}")
    rater = locked(session, rater_by_name(session, rater_name))
    for attempt in range(1, CONFLICT_RETRIES + 1):
        # The rater's lock orders their votes; should a twin's vote still meet this one at the
        # unique current-vote index, undo this attempt alone and go again: the demotion then
        # sees the twin's vote and replaces it.
        try:
            with session.begin_nested():
                session.execute(
                    update(Vote)
                    .where(Vote.candidate_id == candidate_id, Vote.rater_id == rater.id, Vote.is_current)
                    .values(is_current=False)
                )
                vote = Vote(candidate_id=candidate_id, rater_id=rater.id, value=value, is_current=True)
                session.add(vote)
            return vote
        except IntegrityError:
            if attempt == CONFLICT_RETRIES:
                raise
    raise AssertionError("unreachable")


def undo_last_vote(session: Session, rater_name: str) -> int | None:
    """Take back the rater's most recent vote; the vote it replaced (if any) counts again.

    Returns the candidate whose vote was undone, or None when there is nothing to undo."""
    rater = locked(session, rater_by_name(session, rater_name))
    last = session.scalars(
        select(Vote).where(Vote.rater_id == rater.id, Vote.is_current).order_by(Vote.id.desc()).limit(1)
    ).one_or_none()
    if last is None:
        return None
    last.is_current = False
    last.undone_at = utcnow()
    session.flush()
    previous = session.scalars(
        select(Vote)
        .where(
            Vote.rater_id == rater.id,
            Vote.candidate_id == last.candidate_id,
            Vote.undone_at.is_(None),
            Vote.id < last.id,
        )
        .order_by(Vote.id.desc())
        .limit(1)
    ).one_or_none()
    if previous is not None:
        previous.is_current = True
    session.flush()
    return last.candidate_id


@dataclass(frozen=True)
class QueueFilter:
    prompt: str | None = None  # exact prompt
    round_id: int | None = None  # None: any; 0: imported (no round)
    unrated_only: bool = True
    order: str = DEFAULT_POLICY  # "uncertainty" (default), "oldest", "newest-round" or "most-alike"


def _filtered(session: Session, query, rater_name: str, filters: QueueFilter):
    rater = session.scalars(select(Rater).where(named(rater_name)).order_by(Rater.id).limit(1)).one_or_none()
    if filters.unrated_only and rater is not None:
        voted = exists().where(Vote.candidate_id == Candidate.id, Vote.rater_id == rater.id, Vote.is_current)
        query = query.where(~voted)
    if filters.prompt is not None:
        query = query.where(Candidate.prompt == filters.prompt)
    if filters.round_id == 0:
        query = query.where(Candidate.round_id.is_(None))
    elif filters.round_id is not None:
        query = query.where(Candidate.round_id == filters.round_id)
    return query


def _counts_query():
    accepts = func.coalesce(func.sum(case((Vote.value == VoteValue.accept, 1), else_=0)), 0)
    rejects = func.coalesce(func.sum(case((Vote.value == VoteValue.reject, 1), else_=0)), 0)
    return (
        select(Candidate.id, accepts, rejects)
        .outerjoin(Vote, (Vote.candidate_id == Candidate.id) & Vote.is_current)
        .group_by(Candidate.id)
        .order_by(Candidate.id)
    )


def vote_counts(session: Session, weigh: bool = False) -> Votes:
    """The same counts as arrays, for ranking a whole project at once (50,000 images and
    200,000 votes in ~0.1 s: the votes are summed alone, then placed by candidate id). With
    ``weigh``, accepts and rejects are the evidence weighed by each rater's reliability, and the
    votes as cast ride along (Votes.cast)."""
    query = select(Candidate.id, Candidate.prompt, Candidate.phash, Candidate.round_id).order_by(Candidate.id)
    rows = session.execute(query).all()
    ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    prompts = np.array([row[1] for row in rows], dtype=object)  # the selection's rules need both
    hashes = hash_array(row[2] for row in rows)
    # the round that drew each image (-1: the base model or imported): its images share a prior
    sources = source_array(row[3] for row in rows)
    if weigh:  # each vote read once: its rater's weight is needed per vote
        from herdbook.feedback.catalog import decisive_votes
        from herdbook.feedback.reliability import weighed_sums

        votes = decisive_votes(session)
        at, accepted = np.searchsorted(ids, votes[:, 0]), votes[:, 2].astype(bool)
        accepts = np.bincount(at, weights=accepted, minlength=len(ids)).astype(float)
        rejects = np.bincount(at, weights=~accepted, minlength=len(ids)).astype(float)
        images, weighed_accepts, weighed_rejects = weighed_sums(votes[:, 0], votes[:, 1], accepted)
        where = np.searchsorted(ids, images)
        evidence = np.zeros(len(ids)), np.zeros(len(ids))
        evidence[0][where], evidence[1][where] = weighed_accepts, weighed_rejects
        return Votes(ids, *evidence, prompts, hashes, accepts, rejects, sources)
    accepts, rejects = np.zeros(len(ids)), np.zeros(len(ids))
    summed = session.execute(
        select(
            Vote.candidate_id,
            func.sum(case((Vote.value == VoteValue.accept, 1), else_=0)),
            func.sum(case((Vote.value == VoteValue.reject, 1), else_=0)),
        )
        .where(Vote.is_current)
        .group_by(Vote.candidate_id)
    ).all()
    if summed:
        rows = np.fromiter(itertools.chain.from_iterable(summed), dtype=np.int64).reshape(-1, 3)
        at = np.searchsorted(ids, rows[:, 0])
        accepts[at], rejects[at] = rows[:, 1], rows[:, 2]
    return Votes(ids, accepts, rejects, prompts, hashes, sources=sources)


def selection_settledness(session: Session, selection: SelectionPolicy | None = None):
    """How firm the current selection is (see feedback.queueing.Settledness)."""
    from herdbook.feedback.queueing import settledness

    selection = selection or SelectionPolicy()
    return settledness(vote_counts(session, selection.weigh_raters), selection, team_size(session))


def team_size(session: Session, rater_name: str | None = None) -> int:
    """The raters who could vote on an image: everyone who has voted, every user who signs in
    (a new one may not have voted yet), and this rater."""
    names = {name.lower() for name in session.scalars(select(Rater.name))}
    names |= set(session.scalars(select(User.name_key)))
    if rater_name is not None:
        names.add(clean_rater_name(rater_name).lower())
    return len(names)


def rater_slot(session: Session, rater_name: str) -> tuple[int, int]:
    """This rater's place among the raters who may be rating now, and how many there are: those
    active (a vote among the last few thousand, cast in the last 15 minutes) and, once sign-in
    is on, every user, so a team that signs in splits the queue from its first image. (Without
    users, raters who have not voted yet cannot be known, and each starts at the top.)"""
    since = utcnow() - ACTIVE_RATER_WINDOW
    recent = (select(func.max(Vote.id)).scalar_subquery() - RECENT_VOTES).label("recent")
    active = set(
        session.scalars(
            select(Rater.name).join(Vote, Vote.rater_id == Rater.id).where(Vote.id > recent, Vote.created_at >= since)
        )
    )
    active |= set(session.scalars(select(User.name_key)))
    names = sorted({name.lower() for name in active} | {clean_rater_name(rater_name).lower()})
    return names.index(clean_rater_name(rater_name).lower()), len(names)


def nothing_left_text(session: Session, rater_name: str, selection: SelectionPolicy | None = None) -> str:
    """What an empty queue means, said instead of silently emptying: no vote of this rater's
    can change the selection now, and how firm the selection is meanwhile."""
    firm = selection_settledness(session, selection)
    return (
        f"Nothing left that a vote by {rater_name} could change: every image is rated by them or settled. "
        f"The selection: {firm.describe()}. More votes from others, or new candidates, can still move it."
    )


def alike_text(dino: float | None) -> str:
    return "not scored (no DINO model when it was made)" if dino is None else f"DINO {dino:.2f} to the instance set"


def queue_view(
    session: Session,
    rater_name: str,
    filters: QueueFilter = QueueFilter(),
    limit: int = 50,
    selection: SelectionPolicy | None = None,
) -> tuple[list[QueueEntry], int]:
    """The next candidates for this rater, in the filter's order, each with why it is shown,
    and how many the queue holds (in uncertainty order, settled images are not counted).

    The app's Rate page, `herdbook queue` and the queue simulation all rank through this."""
    if filters.order not in POLICIES:
        raise HerdbookError(f"unknown queue order {filters.order!r}; choose one of {', '.join(POLICIES)}")
    eligible = _filtered(session, select(Candidate.id), rater_name, filters)
    if filters.order in ("oldest", "newest-round", "most-alike"):
        size = session.scalar(_filtered(session, select(func.count(Candidate.id)), rater_name, filters)) or 0
        if filters.order == "most-alike":  # DINO similarity to the instance set; unscored images last
            alike = _filtered(session, select(Candidate.id, Candidate.dino), rater_name, filters)
            alike = alike.order_by(Candidate.dino.is_(None), Candidate.dino.desc(), Candidate.id).limit(limit)
            return [QueueEntry(i, alike_text(dino)) for i, dino in session.execute(alike)], size
        if filters.order == "oldest":
            ids = session.scalars(eligible.order_by(Candidate.id).limit(limit))
            return [QueueEntry(i, "oldest first") for i in ids], size
        newest = eligible.order_by(Candidate.round_id.is_(None), Candidate.round_id.desc(), Candidate.id)
        return [QueueEntry(i, "newest round first") for i in session.scalars(newest.limit(limit))], size
    selection = selection or SelectionPolicy()
    votes = vote_counts(session, selection.weigh_raters)
    allowed = np.isin(votes.ids, np.fromiter(session.scalars(eligible), dtype=np.int64))
    slot, raters = rater_slot(session, rater_name)
    ranking = rank(votes, selection, team_size(session, rater_name))
    return next_for(ranking, allowed, slot, raters, limit)


def next_entries(
    session: Session,
    rater_name: str,
    filters: QueueFilter = QueueFilter(),
    limit: int = 50,
    selection: SelectionPolicy | None = None,
) -> list[QueueEntry]:
    return queue_view(session, rater_name, filters, limit, selection)[0]


def rating_queue(
    session: Session,
    rater_name: str,
    filters: QueueFilter = QueueFilter(),
    limit: int = 50,
    selection: SelectionPolicy | None = None,
) -> list[int]:
    """Ids of the next candidates for this rater."""
    return [entry.id for entry in next_entries(session, rater_name, filters, limit, selection)]


def queue_size(
    session: Session, rater_name: str, filters: QueueFilter = QueueFilter(), selection: SelectionPolicy | None = None
) -> int:
    """How many images this rater's queue holds; in uncertainty order, settled images are not counted."""
    return queue_view(session, rater_name, filters, 0, selection)[1]


def rater_vote_count(session: Session, rater_name: str) -> int:
    """A rater's votes as the app shows them: current accepts and rejects. A skip is no vote
    (it says "no opinion"), here as in scores and `herdbook status`."""
    rater = session.scalars(select(Rater).where(named(rater_name)).order_by(Rater.id).limit(1)).one_or_none()
    if rater is None:
        return 0
    decisive = (Vote.rater_id == rater.id, Vote.is_current, Vote.value != VoteValue.skip)
    return session.scalar(select(func.count()).where(*decisive)) or 0


def my_votes(session: Session, rater_name: str, candidate_ids: list[int]) -> dict[int, str]:
    """The rater's current vote on each of these candidates that has one."""
    if not candidate_ids:
        return {}
    rows = session.execute(
        select(Vote.candidate_id, Vote.value)
        .join(Rater)
        .where(named(rater_name), Vote.is_current, Vote.candidate_id.in_(candidate_ids))
    )
    return {cid: VoteValue(value).value for cid, value in rows}


def current_vote(session: Session, candidate_id: int, rater_name: str) -> VoteValue | None:
    return session.scalar(
        select(Vote.value).join(Rater).where(Vote.candidate_id == candidate_id, named(rater_name), Vote.is_current)
    )


def prompt_group(
    session: Session,
    rater_name: str,
    filters: QueueFilter = QueueFilter(),
    size: int = 4,
    selection: SelectionPolicy | None = None,
    passed: frozenset[int] = frozenset(),
) -> list[int]:
    """Up to ``size`` candidates of one prompt for the grid mode: the prompt of the next
    candidate in this rater's queue, and the next ones that share it. ``passed``: candidates
    the rater left for later; they come after every other, and once only they are left."""
    queue = [cid for cid in rating_queue(session, rater_name, filters, limit=1 + len(passed), selection=selection)]
    fresh = [cid for cid in queue if cid not in passed]
    if not fresh:
        return prompt_group(session, rater_name, filters, size, selection) if passed and queue else []
    prompt = session.scalar(select(Candidate.prompt).where(Candidate.id == fresh[0]))
    same_prompt = rating_queue(
        session,
        rater_name,
        QueueFilter(prompt, filters.round_id, filters.unrated_only, filters.order),
        limit=size + len(passed),
        selection=selection,
    )
    return [cid for cid in same_prompt if cid not in passed][:size]
