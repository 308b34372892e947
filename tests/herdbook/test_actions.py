"""The rules behind the pages: raters vote as themselves; admin work needs an admin and is recorded."""

import pytest
from herdbook.db.access import Actor, recent_actions
from herdbook.db.errors import Forbidden
from herdbook.db.models import DatasetVersion, Job, Round
from herdbook.feedback.votes import current_vote
from sqlalchemy import func, select

from herdbook import actions
from tests.herdbook.test_app import demo_home  # noqa: F401 (a fixture)

RATER = Actor("kim", "rater", signed_in=True)
ADMIN = Actor("ann", "admin", signed_in=True)


def test_a_rater_votes_as_themselves_and_can_do_nothing_an_admin_does(demo_home):  # noqa: F811
    store = demo_home.open_store()
    with store.transaction() as session:
        actions.vote(session, RATER, 1, "accept")
        assert current_vote(session, 1, "kim") == "accept"
    attempts = [
        lambda s: actions.sync_dataset(s, RATER, demo_home),
        lambda s: actions.queue_generation(s, RATER, demo_home, {"prompt": "an ox", "count": 1}),
        lambda s: actions.start_round(s, RATER, demo_home),
        lambda s: actions.cancel_round(s, RATER, demo_home, 1),
        lambda s: actions.change_base_model(s, RATER, demo_home, "somewhere/else"),
    ]
    for attempt in attempts:
        with pytest.raises(Forbidden), store.transaction() as session:
            attempt(session)
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(DatasetVersion)) == 0
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(Round)) == 0
        assert recent_actions(session) == []
    assert "somewhere/else" not in demo_home.config_path.read_text()
    store.close()


def test_admin_actions_are_recorded_with_who_did_them(demo_home):  # noqa: F811
    store = demo_home.open_store()
    with store.transaction() as session:
        actions.vote(session, ADMIN, 1, "accept")
        actions.sync_dataset(session, ADMIN, demo_home)
        record, job = actions.start_round(session, ADMIN, demo_home, steps=3)
    with store.transaction() as session:
        done = [(a.actor, a.action, a.detail) for a in reversed(recent_actions(session))]
    assert done[0][:2] == ("ann", "sync") and done[0][2]["version"] == 1
    assert done[1] == ("ann", "start round", {"round": record.id, "job": job.id})
    store.close()
