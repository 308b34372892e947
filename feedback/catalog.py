"""Read-side queries: candidates with their vote counts, and the project's totals."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from herdbook.db.models import Candidate, DatasetVersion, Rater, Round, Vote, VoteValue
from herdbook.feedback.scoring import Tally, agreement, agreement_by_prompt, score, verdict
from sqlalchemy import and_, case, distinct, func, select
from sqlalchemy.orm import Session


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
    negative_prompt: str = ""
    seed: int | None = None
    generation: dict | None = None  # model, scheduler, steps, guidance, resolution of a generated image
    dino: float | None = None  # DINO similarity to the instance set when it was scored (training.evaluation)
    clip_t: float | None = None  # CLIP similarity to its own prompt

    def as_dict(self) -> dict:
        return asdict(self)


def _tally_columns():
    def count(value: VoteValue):
        return func.coalesce(func.sum(case((Vote.value == value, 1), else_=0)), 0)

    return count(VoteValue.accept), count(VoteValue.reject), count(VoteValue.skip)


def list_candidates(
    session: Session, unrated_by: str | None = None, ids: list[int] | None = None, weigh: bool = False
) -> list[CandidateRow]:
    """Every candidate with its votes as cast and its score (from the weighed evidence with ``weigh``)."""
    accepts, rejects, skips = _tally_columns()
    evidence = weighed_evidence(session) if weigh else {}
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
            Candidate.negative_prompt,
            Candidate.seed,
            Candidate.generation,
            Candidate.dino,
            Candidate.clip_t,
        )
        .outerjoin(Vote, and_(Vote.candidate_id == Candidate.id, Vote.is_current))
        .group_by(Candidate.id)
        .order_by(Candidate.id)
    )
    if unrated_by is not None:
        from herdbook.feedback.votes import named

        voted = select(Vote.candidate_id).join(Rater).where(named(unrated_by), Vote.is_current).scalar_subquery()
        query = query.where(Candidate.id.not_in(voted))
    if ids is not None:
        query = query.where(Candidate.id.in_(ids))
    rows = []
    for cid, name, prompt, round_id, path, a, r, s, negative, seed, generation, dino, clip_t in session.execute(query):
        tally_score = round(score(Tally(a, r, s, evidence.get(cid, (0.0, 0.0)) if weigh else None)), 4)
        rows.append(
            CandidateRow(
                cid,
                name,
                prompt,
                round_id,
                path,
                a,
                r,
                s,
                tally_score,
                negative,
                seed,
                generation or None,
                dino,
                clip_t,
            )
        )
    return rows


def tallies(session: Session, weigh: bool = False) -> dict[int, Tally]:
    """Current vote counts per candidate that has any vote; with ``weigh``, each also carries
    its accepts and rejects weighed by each rater's reliability (weighed_evidence)."""
    accepts, rejects, skips = _tally_columns()
    query = select(Vote.candidate_id, accepts, rejects, skips).where(Vote.is_current).group_by(Vote.candidate_id)
    evidence = weighed_evidence(session) if weigh else {}
    return {cid: Tally(a, r, s, evidence.get(cid) if weigh else None) for cid, a, r, s in session.execute(query)}


def decisive_votes(session: Session) -> np.ndarray:
    """Every current accept or reject as rows of (candidate id, rater id, accepted), read as
    numbers (200,000 votes never become Python objects one by one)."""
    rows = session.execute(
        select(Vote.candidate_id, Vote.rater_id, Vote.value == VoteValue.accept).where(
            Vote.is_current, Vote.value != VoteValue.skip
        )
    ).all()
    return np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64).reshape(-1, 3)


def weighed_evidence(session: Session) -> dict[int, tuple[float, float]]:
    """Each voted candidate's accepts and rejects weighed by its raters' reliability."""
    from herdbook.feedback.reliability import weighed_by_image

    votes = decisive_votes(session)
    return weighed_by_image(votes[:, 0], votes[:, 1], votes[:, 2])


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


@dataclass(frozen=True)
class Card:
    """What the rating page shows of one candidate."""

    id: int
    path: str  # relative to the home
    prompt: str
    source_name: str
    round: int | None


def cards(session: Session, ids: list[int]) -> list[Card]:
    """Cards in the order of ``ids`` (one query for a whole queue)."""
    if not ids:
        return []
    rows = session.execute(
        select(Candidate.id, Candidate.path, Candidate.prompt, Candidate.source_name, Candidate.round_id).where(
            Candidate.id.in_(ids)
        )
    )
    by_id = {row[0]: Card(*row) for row in rows}
    return [by_id[i] for i in ids if i in by_id]


def filter_choices(session: Session) -> tuple[list[str], list[int | None]]:
    """The distinct prompts and rounds (None: imported) candidates come from."""
    prompts = list(session.scalars(select(Candidate.prompt).distinct().order_by(Candidate.prompt)))
    rounds = list(session.scalars(select(Candidate.round_id).distinct()))
    return prompts, sorted(rounds, key=lambda r: -1 if r is None else r)


def acceptance_by_round(session: Session) -> list[dict]:
    """Per round (None: base and imported), how many candidates were rated and how many accepted:
    the share rising round over round is how a team sees the loop working."""
    counts = tallies(session)
    rounds = dict(session.execute(select(Candidate.id, Candidate.round_id)).all())
    summary: dict[int | None, dict] = {}
    for cid, tally in counts.items():
        if not tally.decisive:
            continue
        entry = summary.setdefault(rounds.get(cid), {"round": rounds.get(cid), "rated": 0, "accepted": 0})
        entry["rated"] += 1
        entry["accepted"] += verdict(tally) == "accepted"
    rows = sorted(summary.values(), key=lambda e: -1 if e["round"] is None else e["round"])
    for row in rows:
        row["share"] = row["accepted"] / row["rated"]
    return rows


def rater_agreement(session: Session) -> dict:
    """How much raters agree, overall and per prompt (images with two or more decisive votes)."""
    counts = tallies(session)
    prompts = dict(session.execute(select(Candidate.id, Candidate.prompt).where(Candidate.id.in_(counts))).all())
    by_prompt: dict[str, list[Tally]] = {}
    for cid, tally in counts.items():
        by_prompt.setdefault(prompts[cid], []).append(tally)

    def plain(result) -> dict:
        return {"images": result.items, "pairwise": result.pairwise, "fleiss_kappa": result.fleiss_kappa}

    return {
        "overall": plain(agreement(counts.values())),
        "by_prompt": {
            prompt: plain(result) for prompt, result in agreement_by_prompt(by_prompt).items() if result.items
        },
    }


def rater_reliability(session: Session) -> list[dict]:
    """Each rater's estimated sensitivity, specificity and weight (feedback.reliability), from
    every current accept or reject, with how many shared images each estimate rests on."""
    from herdbook.feedback.reliability import reliability

    rows = session.execute(
        select(Vote.candidate_id, Rater.name, Vote.value)
        .join(Rater, Rater.id == Vote.rater_id)
        .where(Vote.is_current, Vote.value != VoteValue.skip)
    )
    raters, _ = reliability((cid, name, value == VoteValue.accept) for cid, name, value in rows)
    return [raters[name].as_dict() for name in sorted(raters)]


def agreement_sentences(agreement: dict[str, dict]) -> list[str]:
    """``fidelity_agreement`` as a person reads it, a sentence per score that has an AUC."""
    names = {"dino": "DINO similarity to the instance set", "clip_t": "CLIP-T"}
    return [
        f"{names[key]} agrees with the votes at AUC {figures['auc']:.2f} over {figures['accepted']} accepted and "
        f"{figures['rejected']} rejected scored images (0.5 = chance, 1 = it sorts them as the team does)"
        for key, figures in agreement.items()
        if figures["auc"] is not None
    ]


def unscored_candidates(session: Session, everything: bool = False) -> list[int]:
    query = select(Candidate.id).order_by(Candidate.id)
    if not everything:
        query = query.where(Candidate.dino.is_(None) | Candidate.clip_t.is_(None))
    return list(session.scalars(query))


def fidelity_agreement(session: Session) -> dict[str, dict]:
    """How far each candidate score agrees with the team: the AUC of DINO similarity (and of
    CLIP-T) for the images the votes accept against those they reject, over the scored images
    with a verdict. 1.0: the score orders them as the team does; 0.5: chance; None: too few."""
    from herdbook.feedback.scoring import auc

    counts = tallies(session)
    rows = session.execute(select(Candidate.id, Candidate.dino, Candidate.clip_t).where(Candidate.id.in_(counts))).all()
    result = {}
    for key, column in (("dino", 1), ("clip_t", 2)):
        by_verdict: dict[str, list[float]] = {"accepted": [], "rejected": []}
        for row in rows:
            if row[column] is not None and verdict(counts[row[0]]) in by_verdict:
                by_verdict[verdict(counts[row[0]])].append(row[column])
        result[key] = {
            "auc": auc(by_verdict["accepted"], by_verdict["rejected"]),
            "accepted": len(by_verdict["accepted"]),
            "rejected": len(by_verdict["rejected"]),
        }
    return result


def candidate_hashes(session: Session) -> set[str]:
    """The sha256 of every candidate's bytes: what any image herdbook stored can be checked against."""
    return set(session.scalars(select(Candidate.sha256)))


def damaged_files(session: Session, root: Path) -> list[tuple[int, str, str]]:
    """Candidates whose image file is there but no longer hashes to what was stored: (id,
    source name, path). Reads every file, so it is for checks, not for every command."""
    rows = session.execute(
        select(Candidate.id, Candidate.source_name, Candidate.path, Candidate.sha256).order_by(Candidate.id)
    )
    damaged = []
    for cid, name, path, sha256 in rows:
        file = root / path
        if file.is_file():
            with file.open("rb") as handle:
                if hashlib.file_digest(handle, "sha256").hexdigest() != sha256:
                    damaged.append((cid, name, path))
    return damaged


def missing_files(session: Session, root: Path) -> list[tuple[int, str, str]]:
    """Candidates whose image file is gone from the home: (id, source name, path)."""
    rows = session.execute(select(Candidate.id, Candidate.source_name, Candidate.path).order_by(Candidate.id))
    return [(cid, name, path) for cid, name, path in rows if not (root / path).is_file()]
