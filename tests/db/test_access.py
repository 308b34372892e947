"""Users, roles and passwords: hashed, matched whatever the case, checked below the pages."""

import pytest
from herdbook.db.access import Actor, add_user, authenticate, list_users, sign_in_required
from herdbook.db.errors import Forbidden, HerdbookError
from herdbook.db.models import User
from sqlalchemy import select


def test_a_password_is_kept_only_as_an_argon2_hash_and_checked(store):
    with store.transaction() as session:
        assert not sign_in_required(session)
        add_user(session, "Ann", "admin", "correct horse")
    with store.transaction() as session:
        stored = session.scalars(select(User)).one().password_hash
        assert stored.startswith("$argon2id$") and "correct horse" not in stored
        assert sign_in_required(session)
        assert authenticate(session, "ann", "correct horse") == Actor("Ann", "admin", signed_in=True)
        assert authenticate(session, "Ann", "wrong horse") is None
        assert authenticate(session, "nobody", "correct horse") is None


def test_names_are_one_whatever_their_case_and_bad_input_is_refused(store):
    with store.transaction() as session:
        add_user(session, "Ann", "rater", "long enough")
        with pytest.raises(HerdbookError, match="already a user"):
            add_user(session, "ANN", "admin", "long enough")
        with pytest.raises(HerdbookError, match="too short"):
            add_user(session, "bob", "rater", "short")
        with pytest.raises(HerdbookError, match="role must be"):
            add_user(session, "bob", "owner", "long enough")
        assert [u["name"] for u in list_users(session)] == ["Ann"]


def test_a_rater_may_not_do_what_an_admin_does():
    with pytest.raises(Forbidden, match="only an admin may sync"):
        Actor("kim", "rater", signed_in=True).require_admin("sync")
    Actor("ann", "admin", signed_in=True).require_admin("sync")


def test_failed_sign_ins_wait_longer_each_time_then_lock():
    from datetime import UTC, datetime, timedelta

    from herdbook.db.access import BY_NAME, wait_before_next_try

    start = datetime(2026, 1, 1, tzinfo=UTC)
    failures = [start + timedelta(seconds=i) for i in range(12)]
    waits = [wait_before_next_try(failures[:n], failures[n - 1], BY_NAME) for n in range(1, 12)]
    assert waits[:2] == [0, 0]  # a typo or two costs nothing
    assert waits[2:9] == [2, 4, 8, 16, 32, 64, 128]  # then doubling
    assert waits[9] == waits[10] == 3600  # ten in a row: locked for the window
    assert wait_before_next_try(failures[:3], failures[2] + timedelta(seconds=1.5), BY_NAME) == 0.5
    assert wait_before_next_try(failures[:10], failures[9] + timedelta(hours=2), BY_NAME) == 0  # the window passed


@pytest.mark.slow  # seconds: out of the quick loop
def test_sign_in_holds_back_guesses_per_name_and_client_logs_them_and_an_admin_unlocks(store):
    from datetime import UTC, datetime, timedelta

    from herdbook.db.access import recent_actions, sign_in, unlock_sign_in
    from herdbook.db.errors import SignInRefused

    with store.transaction() as session:
        add_user(session, "Ann", "admin", "correct horse")
    clock = [datetime.now(UTC)]

    def attempt(password, name="ann", client="10.0.0.9"):
        with store.transaction() as session:
            return sign_in(session, name, password, client, now=clock[0])

    for _ in range(3):
        assert attempt("wrong") is None
    with pytest.raises(SignInRefused, match="try again in 2 s"):
        attempt("correct horse")  # held back: not even the right password is checked
    clock[0] += timedelta(seconds=2)
    assert attempt("correct horse") == Actor("Ann", "admin", signed_in=True)  # and the count starts again
    for n in range(10):
        assert attempt("wrong", client=f"10.0.1.{n}") is None  # from ten addresses: the name still counts
        clock[0] += timedelta(seconds=200)
    with pytest.raises(SignInRefused, match=r"locked after 10 failed tries.*users unlock"):
        attempt("correct horse")
    with store.transaction() as session:
        logged = [(a.actor, a.action, a.detail["client"]) for a in recent_actions(session) if "sign" in a.action]
        assert logged[0] == ("ann", "failed sign-in", "10.0.1.9") and len(logged) == 14
        unlock_sign_in(session, "Ann")
    assert attempt("correct horse").name == "Ann"
    # one address trying many names is held back too
    for n in range(10):
        assert attempt("guess", name=f"user{n}", client="10.0.0.66") is None
    with pytest.raises(SignInRefused, match="this browser's address"):
        attempt("correct horse", client="10.0.0.66")
    assert attempt("correct horse", client="10.0.0.7").name == "Ann"  # others are not
