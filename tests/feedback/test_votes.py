import pytest
from herdbook.db.models import Vote
from herdbook.feedback.votes import (
    QueueFilter,
    cast_vote,
    current_vote,
    queue_size,
    rater_vote_count,
    rating_queue,
    undo_last_vote,
)
from sqlalchemy import select

from herdbook.errors import HerdbookError, NotFound


def test_a_new_vote_replaces_the_old_one_and_keeps_it_as_history(store, imported):
    first = imported[0]
    with store.transaction() as session:
        cast_vote(session, first, "ann", "accept")
        cast_vote(session, first, "ann", "reject")
        assert current_vote(session, first, "ann") == "reject"
        history = session.scalars(select(Vote.value).where(Vote.candidate_id == first).order_by(Vote.id)).all()
        assert history == ["accept", "reject"]
        assert rater_vote_count(session, "ann") == 1


def test_undo_takes_back_the_last_vote_and_restores_the_one_before(store, imported):
    a, b = imported[:2]
    with store.transaction() as session:
        cast_vote(session, a, "ann", "accept")
        cast_vote(session, a, "ann", "reject")
        cast_vote(session, b, "ann", "accept")
        assert undo_last_vote(session, "ann") == b
        assert current_vote(session, b, "ann") is None
        assert undo_last_vote(session, "ann") == a
        assert current_vote(session, a, "ann") == "accept"


def test_undo_with_nothing_to_undo_says_none(store, imported):
    with store.transaction() as session:
        assert undo_last_vote(session, "nobody") is None


def test_queue_holds_what_this_rater_has_not_voted_on(store, imported):
    with store.transaction() as session:
        cast_vote(session, imported[0], "ann", "accept")
        cast_vote(session, imported[1], "bob", "reject")
        oldest = QueueFilter(order="oldest")
        assert rating_queue(session, "ann", oldest)[:2] == [imported[1], imported[2]]
        assert queue_size(session, "ann", oldest) == 7
        assert queue_size(session, "carol", oldest) == 8
        assert rating_queue(session, "ann", QueueFilter(prompt="the oxenai ox", order="oldest")) == imported[4:]
        assert queue_size(session, "ann", QueueFilter(unrated_only=False, order="oldest")) == 8
        # the default order holds the unsettled images, never one ann voted on, nor the one bob
        # rejected: of a team of two, ann's accept would only tie it, and a tie selects nothing
        assert sorted(rating_queue(session, "ann")) == imported[2:]
        assert imported[1] in rating_queue(session, "carol")  # a third rater could still bring it in


def test_votes_need_a_real_candidate_and_a_named_rater(store, imported):
    with store.transaction() as session:
        with pytest.raises(NotFound):
            cast_vote(session, 12345, "ann", "accept")
        with pytest.raises(HerdbookError, match="name"):
            cast_vote(session, imported[0], "   ", "accept")
        with pytest.raises(ValueError):
            cast_vote(session, imported[0], "ann", "love")


def test_a_new_raters_first_votes_from_many_tabs_at_once_are_all_kept(home, imported):
    """Two tabs (or devices) of a new rater voting at the same moment used to fail with
    UNIQUE constraint failed: raters.name."""
    import threading

    from herdbook.db.models import Rater, Vote
    from sqlalchemy import func, select

    stores = [home.open_store() for _ in imported]
    start = threading.Barrier(len(imported))
    failures = []

    def first_vote(store, candidate_id):
        start.wait()
        try:
            with store.transaction() as session:
                cast_vote(session, candidate_id, "zed", "accept")
        except Exception as error:
            failures.append(error)

    threads = [threading.Thread(target=first_vote, args=pair) for pair in zip(stores, imported, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with stores[0].transaction() as session:
        assert session.scalar(select(func.count(Rater.id)).where(Rater.name == "zed")) == 1
        assert session.scalar(select(func.count(Vote.id))) == len(imported)
    for store in stores:
        store.close()


def test_rater_names_that_differ_only_by_case_are_one_rater(store, imported):
    from herdbook.db.models import Rater
    from herdbook.feedback.votes import rater_vote_count
    from sqlalchemy import func, select

    with store.transaction() as session:
        cast_vote(session, imported[0], "Alice", "accept")
        cast_vote(session, imported[1], "alice", "reject")
        cast_vote(session, imported[0], "ALICE", "reject")  # replaces her first vote
        assert session.scalar(select(func.count(Rater.id))) == 1
        assert session.scalars(select(Rater.name)).one() == "Alice"
        assert rater_vote_count(session, "aLiCe") == 2
        assert current_vote(session, imported[0], "alice") == "reject"


def test_the_team_is_every_rater_and_user_and_status_settles_once_all_have_voted(store, imported):
    from herdbook.db.access import add_user
    from herdbook.feedback.selection import SelectionPolicy
    from herdbook.feedback.votes import selection_settledness, team_size

    with store.transaction() as session:
        for cid in imported:
            cast_vote(session, cid, "ann", "accept")
            cast_vote(session, cid, "Bob", "reject" if cid % 2 else "accept")
        assert team_size(session) == 2 and team_size(session, "carol") == 3 and team_size(session, "bob") == 2
        firm = selection_settledness(session, SelectionPolicy(top_k=2))
        assert (firm.undecided, firm.expected_survivors) == (0, 1.0)  # nobody is left to vote
        add_user(session, "dee", "rater", "dee's password")  # a user who has not voted yet could
        assert team_size(session) == 3 and selection_settledness(session, SelectionPolicy(top_k=2)).undecided > 0


def test_the_queue_weighs_votes_as_the_selection_does(store, imported):
    """The queue reads every vote as numbers and weighs it in numpy; the selection's tallies weigh
    in SQL: the same evidence per image, and the votes as cast beside it."""
    import numpy as np
    from herdbook.feedback.catalog import tallies
    from herdbook.feedback.votes import vote_counts

    with store.transaction() as session:
        for rater in ("ann", "bob", "cai"):
            for cid, value in zip(imported[:6], ["accept", "reject"] * 3, strict=True):
                cast_vote(session, cid, rater, value)
        for cid in imported[:7]:
            cast_vote(session, cid, "spam", "accept")
        cast_vote(session, imported[7], "ann", "skip")
    with store.transaction() as session:
        votes, counted = vote_counts(session, weigh=True), tallies(session, weigh=True)
    for position, cid in enumerate(votes.ids.tolist()):
        tally = counted.get(cid)
        evidence = tally.evidence if tally else (0.0, 0.0)
        assert (votes.accepts[position], votes.rejects[position]) == pytest.approx(evidence)
        cast = (tally.accepts, tally.rejects) if tally else (0, 0)
        assert (votes.accepts_cast[position], votes.rejects_cast[position]) == cast
    spam_only = list(votes.ids).index(imported[6])
    assert 0 < votes.accepts[spam_only] < 1 and np.isclose(votes.accepts_cast[spam_only], 1)


def test_the_queue_knows_which_round_drew_each_image(store, imported):
    """Images of one round share the queue's prior: the counts carry each image's round, -1 for
    the base model's and imported ones, weighed or not."""
    from herdbook.db.models import Candidate, Round
    from herdbook.feedback.votes import vote_counts

    with store.transaction() as session:
        trained = Round(base_model="base", mode="lora")
        session.add(trained)
        session.flush()
        session.get(Candidate, imported[1]).round_id = trained.id
        round_id = trained.id
    with store.transaction() as session:
        for weigh in (False, True):
            votes = vote_counts(session, weigh=weigh)
            expected = [round_id if cid == imported[1] else -1 for cid in votes.ids.tolist()]
            assert votes.sources.tolist() == expected
