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
