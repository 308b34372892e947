"""What people do in the app, with who may do it checked here, below the pages: a rater votes
as themselves; generating, training, syncing, pushing and deleting need an admin. Each admin
action is recorded with its actor (votes carry their rater already).

Every action first reads its actor back from the users table (``as_now``): a page hands in the
actor of its last load, which may be a user since removed, a role since changed, or an open
tab from before sign-in was turned on. The pages call only these for anything that changes the
project; hiding a button is for looks, this is the rule."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from herdbook.db.access import Actor, as_now, record_action
from herdbook.db.models import Job, Round
from herdbook.feedback.curation import sync
from herdbook.feedback.votes import cast_vote, undo_last_vote
from herdbook.home import Home, set_base_model
from herdbook.jobs import submit
from herdbook.training import rounds


def admin(session: Session, actor: Actor, doing: str) -> Actor:
    """The actor as they are now, who must be an admin to go on ``doing``."""
    actor = as_now(session, actor)
    actor.require_admin(doing)
    return actor


def vote(session: Session, actor: Actor, candidate_id: int, value: str) -> None:
    actor = as_now(session, actor)
    cast_vote(session, candidate_id, actor.name, value)  # the actor's own name: never someone else's


def undo(session: Session, actor: Actor) -> int | None:
    actor = as_now(session, actor)
    return undo_last_vote(session, actor.name)


def sync_dataset(session: Session, actor: Actor, home: Home):
    actor = admin(session, actor, "commit a dataset version")
    result = sync(session, home.dataset_repo, home.root, home.config.selection)
    if result.version is not None:
        record_action(session, actor, "sync", version=result.version.id, commit=result.version.commit_id)
    return result


def queue_generation(session: Session, actor: Actor, home: Home, params: dict) -> Job:
    actor = admin(session, actor, "generate candidates")
    job = submit(session, home, "generate", params)
    record_action(session, actor, "generate", job=job.id, **params)
    return job


def start_round(session: Session, actor: Actor, home: Home, **plan) -> tuple[Round, Job]:
    actor = admin(session, actor, "start a round")
    record = rounds.plan_round(session, home.project, **plan)
    job = submit(session, home, "train", {"round_id": record.id})
    record_action(session, actor, "start round", round=record.id, job=job.id)
    return record, job


def resume_round(session: Session, actor: Actor, home: Home, round_id: int) -> Job:
    actor = admin(session, actor, "resume a round")
    record = rounds.resumable(session, round_id, home.config.jobs.stale_after_seconds)
    job = submit(session, home, "train", {"round_id": record.id})
    record_action(session, actor, "resume round", round=round_id, job=job.id)
    return job


def cancel_round(session: Session, actor: Actor, home: Home, round_id: int) -> None:
    actor = admin(session, actor, "cancel a round")
    stale_after = home.config.jobs.stale_after_seconds
    rounds.mark_interrupted_rounds(session, stale_after)
    rounds.cancel_round(session, round_id, stale_after)
    record_action(session, actor, "cancel round", round=round_id)


def delete_round(session: Session, actor: Actor, home: Home, round_id: int) -> Path:
    """Returns the round's folder, for `training.rounds.remove_round_files` after the commit."""
    actor = admin(session, actor, "delete a round")
    folder = rounds.delete_round(session, home.project, round_id)
    record_action(session, actor, "delete round", round=round_id)
    return folder


def change_base_model(session: Session, actor: Actor, home: Home, base_model: str) -> Home:
    actor = admin(session, actor, "change the base model")
    changed = set_base_model(home.root, base_model)
    record_action(session, actor, "set base model", base_model=changed.config.base_model)
    return changed
