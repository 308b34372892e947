"""The rules behind the pages: raters vote as themselves; admin work needs an admin and is recorded."""

import pytest
from herdbook.db.access import Actor, add_user, recent_actions, remove_user
from herdbook.db.errors import Forbidden
from herdbook.db.models import DatasetVersion, Job, Round
from herdbook.feedback.votes import current_vote
from sqlalchemy import func, select

from herdbook import actions
from tests.herdbook.test_app import demo_home  # noqa: F401 (a fixture)

RATER = Actor("kim", "rater", signed_in=True)
ADMIN = Actor("ann", "admin", signed_in=True)


@pytest.fixture
def signed_home(demo_home):  # noqa: F811
    """The demo home with sign-in on: kim rates, ann is an admin."""
    store = demo_home.open_store()
    with store.transaction() as session:
        add_user(session, "kim", "rater", "kims password")
        add_user(session, "ann", "admin", "anns password")
    store.close()
    return demo_home


def test_a_rater_votes_as_themselves_and_can_do_nothing_an_admin_does(signed_home):
    home = signed_home
    store = home.open_store()
    with store.transaction() as session:
        actions.vote(session, RATER, 1, "accept")
        assert current_vote(session, 1, "kim") == "accept"
    attempts = [
        lambda s: actions.sync_dataset(s, RATER, home),
        lambda s: actions.queue_generation(s, RATER, home, {"prompt": "an ox", "count": 1}),
        lambda s: actions.start_round(s, RATER, home),
        lambda s: actions.cancel_round(s, RATER, home, 1),
        lambda s: actions.change_base_model(s, RATER, home, "somewhere/else"),
    ]
    for attempt in attempts:
        with pytest.raises(Forbidden), store.transaction() as session:
            attempt(session)
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(DatasetVersion)) == 0
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(Round)) == 0
        assert recent_actions(session) == []
    assert "somewhere/else" not in home.config_path.read_text()
    store.close()


def test_admin_actions_are_recorded_with_who_did_them(signed_home):
    home = signed_home
    store = home.open_store()
    with store.transaction() as session:
        actions.vote(session, ADMIN, 1, "accept")
        actions.sync_dataset(session, ADMIN, home)
        record, job = actions.start_round(session, ADMIN, home, steps=3)
    with store.transaction() as session:
        done = [(a.actor, a.action, a.detail) for a in reversed(recent_actions(session))]
    assert done[0][:2] == ("ann", "sync") and done[0][2]["version"] == 1
    assert done[1] == ("ann", "start round", {"round": record.id, "job": job.id})
    store.close()


def test_each_action_checks_its_actor_against_the_users_as_they_are_now(demo_home):  # noqa: F811
    """A tab keeps the actor of its last page load: an open-app visitor from before sign-in
    was turned on, a removed admin and a demoted one are refused at their next action."""
    store = demo_home.open_store()
    open_tab = Actor("mallory", "admin")  # the open app's visitor, named by ?rater=
    with store.transaction() as session:
        actions.vote(session, open_tab, 1, "accept")  # no users yet: the app is open
        add_user(session, "boss", "admin", "boss password")
        add_user(session, "kim", "rater", "kims password")
    with pytest.raises(Forbidden, match="sign in"), store.transaction() as session:
        actions.vote(session, open_tab, 2, "accept")
    with pytest.raises(Forbidden, match="sign in"), store.transaction() as session:
        actions.cancel_round(session, open_tab, demo_home, 1)
    boss = Actor("boss", "admin", signed_in=True)
    with store.transaction() as session:
        remove_user(session, "boss")
    with pytest.raises(Forbidden, match="no longer a user"), store.transaction() as session:
        actions.sync_dataset(session, boss, demo_home)
    stale_admin = Actor("kim", "admin", signed_in=True)  # kim's tab from when kim was an admin
    with pytest.raises(Forbidden, match="only an admin"), store.transaction() as session:
        actions.start_round(session, stale_admin, demo_home)
    with store.transaction() as session:
        actions.vote(session, stale_admin, 3, "reject")  # still a rater: votes count, as kim
        assert current_vote(session, 3, "kim") == "reject"
        assert current_vote(session, 2, "mallory") is None
        assert recent_actions(session) == [] and session.scalar(select(func.count()).select_from(Round)) == 0
    store.close()


def test_the_cli_operator_is_not_asked_to_sign_in(signed_home):
    store = signed_home.open_store()
    operator = Actor("root (cli)", "admin", operator=True)
    with store.transaction() as session:
        actions.sync_dataset(session, operator, signed_home)
        assert recent_actions(session)[0].actor == "root (cli)"
    store.close()
