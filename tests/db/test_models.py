import pytest
from herdbook.db.models import Candidate, Rater, Vote, VoteValue
from sqlalchemy.exc import IntegrityError


def test_one_current_vote_per_rater_and_image(store):
    with store.transaction() as session:
        candidate = Candidate(sha256="a" * 64, path="x.png", source_name="x.png", width=1, height=1)
        rater = Rater(name="ann")
        session.add_all([candidate, rater])
        session.flush()
        session.add(Vote(candidate_id=candidate.id, rater_id=rater.id, value=VoteValue.accept, is_current=True))
    with pytest.raises(IntegrityError), store.transaction() as session:
        session.add(Vote(candidate_id=candidate.id, rater_id=rater.id, value=VoteValue.reject, is_current=True))


def test_same_bytes_are_never_stored_twice(store):
    with pytest.raises(IntegrityError), store.transaction() as session:
        session.add(Candidate(sha256="b" * 64, path="1.png", source_name="1.png", width=1, height=1))
        session.add(Candidate(sha256="b" * 64, path="2.png", source_name="2.png", width=1, height=1))


def test_foreign_keys_are_enforced(store):
    with pytest.raises(IntegrityError), store.transaction() as session:
        session.add(Vote(candidate_id=999, rater_id=999, value=VoteValue.accept))
