"""The rating queue's policy, on plain data: no database, no browser."""

import re

import pytest
from herdbook.feedback.queueing import ImageVotes, QueueEntry, settledness, spread, uncertainty_order
from herdbook.feedback.selection import SelectionPolicy

POLICY = SelectionPolicy(top_k=2, min_votes=1)


def project(*tallies, unrated=0):
    images = [ImageVotes(i + 1, a, r, None, f"p{i}") for i, (a, r) in enumerate(tallies)]
    images += [ImageVotes(len(images) + j + 1) for j in range(unrated)]
    return images


def ids(entries: list[QueueEntry]) -> list[int]:
    return [e.id for e in entries]


def select_ids(images, policy: SelectionPolicy) -> set[int]:
    """What ``herdbook select`` takes: select_instance_images itself, the reference the queue's
    array version of it must match."""
    from herdbook.feedback.queueing import Votes
    from herdbook.feedback.scoring import Tally
    from herdbook.feedback.selection import RatedImage, select_instance_images

    votes = images if isinstance(images, Votes) else Votes.of(images)
    accepts, rejects = votes.cast
    rated = [
        RatedImage(
            int(votes.ids[i]),
            votes.prompts[i] if votes.prompts is not None else "",
            Tally(int(accepts[i]), int(rejects[i]), weighed=(float(votes.accepts[i]), float(votes.rejects[i]))),
            f"{int(votes.hashes[i]):016x}" if votes.hashes is not None and votes.hashes[i] else None,
        )
        for i in range(len(votes.ids))
        if votes.decisive[i] > 0
    ]
    return {d.image.id for d in select_instance_images(rated, policy) if d.selected}


def test_settled_images_leave_the_queue():
    # 1, 2: clearly in (12 of 12); 3: clearly out (0 of 12); 4: one accept, one reject: unsettled
    images = project((12, 0), (12, 0), (0, 12), (1, 1), (0, 6), (0, 5))
    order = ids(uncertainty_order(images, POLICY))
    assert 4 in order
    assert not {1, 2, 3, 5, 6} & set(order)


def test_an_image_straddling_the_cut_outranks_unrated_and_nearly_settled_ones():
    # as in a real project, most rated images were rejected
    images = project((3, 0), (3, 0), (2, 1), (1, 2), *[(0, 2)] * 20, unrated=3)
    order = uncertainty_order(images, POLICY)
    assert order[0].id == 3  # 2 accepts, 1 reject: right at the cut
    assert order[0].reason == "near the cut, out: 2 accepts, 1 reject"
    assert ids(order).index(3) < ids(order).index(4)


def test_unrated_images_are_explored_until_the_top_k_is_confidently_full():
    few_good = project((1, 0), (0, 1), *[(0, 1)] * 20, unrated=50)
    assert any(e.reason.startswith("unrated") for e in uncertainty_order(few_good, POLICY))
    settled = project((8, 0), (8, 0), *[(0, 1)] * 200, unrated=3)
    assert not any(e.reason.startswith("unrated") for e in uncertainty_order(settled, POLICY))


def test_images_in_the_top_k_short_of_min_votes_come_first():
    policy = SelectionPolicy(top_k=2, min_votes=3)
    images = project((2, 0), (1, 0), (5, 5), *[(0, 3)] * 20, unrated=4)
    order = uncertainty_order(images, policy)
    assert ids(order)[0] == 1 and order[0].reason == "in the top 2 with 2 votes of 3"
    assert ids(order)[1] == 3  # then the most uncertain: 5 accepts, 5 rejects


def test_two_raters_are_not_handed_the_same_unsettled_image_at_once():
    order = [QueueEntry(i, "near the cut") for i in range(1, 9)]
    ann, bob = spread(order, 0, 2), spread(order, 1, 2)
    assert ann[0].id != bob[0].id
    assert not set(ids(ann[:4])) & set(ids(bob[:4]))
    assert sorted(ids(ann)) == sorted(ids(bob)) == list(range(1, 9))  # nobody's queue loses an image
    assert spread(order, 0, 1) == order


def test_settledness_says_how_firm_the_selection_is():
    firm = settledness(project((8, 0), (8, 0), *[(0, 8)] * 10), POLICY)
    assert firm.selected == 2 and firm.expected_survivors > 0.95 and firm.undecided == 0
    shaky = settledness(project((1, 0), (1, 0), (1, 1), (0, 1), unrated=40), POLICY)
    assert shaky.expected_survivors < 0.8 and shaky.undecided >= 1 and shaky.unrated_open == 40
    assert "expected to stay" in shaky.describe()


def test_the_uncertainty_queue_beats_arrival_order_in_a_small_simulation():
    """bench/queue_simulation.py on a small project and one fixed seed."""
    import random
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import queue_simulation as sim

    project_ = sim.make_project(random.Random(3), candidates=600, good=36, raters=6, borderline_share=0.01)
    arrival = sim.simulate("arrival order", project_, 3, budget=3600, checkpoints=(600,))
    ours = sim.simulate("uncertainty queue", project_, 3, budget=3600, checkpoints=(600,))
    assert ours["votes_to_95"] is not None
    assert arrival["votes_to_95"] is None or ours["votes_to_95"] < arrival["votes_to_95"]
    assert ours["precision_at_600"] > arrival["precision_at_600"]


def test_settledness_counts_the_selection_select_makes_near_copies_left_out():
    """Three images each accepted once, one a re-encode of another: select picks 2; status said 3."""
    from herdbook.feedback.queueing import current_selection

    images = [
        ImageVotes(1, 1, 0, None, "an ox", "ffff000000000000"),
        ImageVotes(2, 1, 0, None, "an ox", "ffff000000000001"),  # 1 bit away: a re-encode of #1
        ImageVotes(3, 1, 0, None, "an ox", "0000ffff0000ffff"),
    ]
    policy = SelectionPolicy(top_k=24)
    assert current_selection(images, policy) == {1, 3}
    assert settledness(images, policy).selected == 2


def test_a_small_projects_queue_never_shows_an_image_the_rules_exclude_before_an_unrated_one():
    """24 candidates, K = 24: three raters rejected six (0 of 3) and accepted six. A fourth rater's
    queue began with the six rejected, 'near the cut', though no vote of theirs can bring one in."""
    images = project(*[(3, 0)] * 6, *[(0, 3)] * 6, unrated=12)
    policy = SelectionPolicy(top_k=24)
    order = ids(uncertainty_order(images, policy, team=4))
    rejected = set(range(7, 13))
    assert not rejected & set(order)  # settled out: a 4th accept makes 1 of 4, still no majority
    assert set(range(13, 25)) <= set(order)  # every unrated image is offered
    firm = settledness(images, policy, team=4)
    assert firm.undecided == 0 and firm.settled >= 6
    # with a larger team the same votes could still turn: 0 of 3 with 4 raters to come
    assert rejected <= set(ids(uncertainty_order(images, policy, team=7)))


def test_once_no_vote_can_come_the_selection_is_settled():
    """K=2, two raters, 30 images rated by both: both queues were empty, yet status said 3
    undecided and 87% expected to stay. K=24, 8 raters, 30 images accepted 8-0: it said 50%."""
    both_rated = project(*[(2, 0)] * 3, *[(1, 1)] * 12, *[(0, 2)] * 15)
    firm = settledness(both_rated, SelectionPolicy(top_k=2), team=2)
    assert (firm.undecided, firm.expected_survivors) == (0, 1.0)
    unanimous = settledness(project(*[(8, 0)] * 30), SelectionPolicy(top_k=24), team=8)
    assert (unanimous.selected, unanimous.undecided, unanimous.expected_survivors) == (24, 0, 1.0)
    # a ninth rater could still vote on each: then the ties at the cut are honestly open
    assert settledness(project(*[(8, 0)] * 30), SelectionPolicy(top_k=24), team=9).undecided > 0


def test_the_unrated_are_explored_as_long_as_the_beta_prior_says_better_ones_hide_there():
    """1,000 unrated, 30 images at 5-0, 600 at 0-2: the normal approximation of the skewed prior
    expected 0.23 unrated images above the cut and stopped offering them; the Beta gives 14.9."""
    from herdbook.feedback.queueing import Votes, _cut, posterior

    images = project(*[(5, 0)] * 30, *[(0, 2)] * 600, unrated=1000)
    votes = Votes.of(images)
    belief = posterior(votes)
    assert belief.above(_cut(belief.mean, 24))[votes.decisive == 0].sum() == pytest.approx(14.9, abs=0.1)
    order = uncertainty_order(images, SelectionPolicy(top_k=24))
    assert sum(e.reason.startswith("unrated") for e in order) == 1000


def test_a_better_rounds_first_accepts_put_its_unrated_images_ahead_of_an_older_rounds():
    """Images share a prior with the round that drew them: round 2's first votes (4 of 5
    accepted) say its unrated images are likelier good than round 1's (5 of 60), so they are
    asked about first, and more of them are expected above the cut. Without rounds the two
    kinds of unrated image are alike and go oldest first."""
    from herdbook.feedback.queueing import Votes, posterior

    def images(rounds: tuple[int | None, int | None]) -> list[ImageVotes]:
        old, new = rounds
        made = [ImageVotes(i, 1 if i < 5 else 0, 0 if i < 5 else 1, old, f"a{i}") for i in range(60)]
        made += [ImageVotes(60 + i, 1 if i < 4 else 0, 0 if i < 4 else 1, new, f"b{i}") for i in range(5)]
        made += [ImageVotes(100 + i, 0, 0, old, "a") for i in range(20)]
        return made + [ImageVotes(200 + i, 0, 0, new, "b") for i in range(20)]

    by_round, alike = images((1, 2)), images((None, None))
    belief = posterior(Votes.of(by_round))
    assert belief.mean[-1] > 2 * belief.mean[-21]  # an unrated image of round 2 against one of round 1
    unrated = [e.id for e in uncertainty_order(by_round, SelectionPolicy(top_k=4), team=3) if e.id >= 100]
    assert unrated[:20] == list(range(200, 220))
    unrated = [e.id for e in uncertainty_order(alike, SelectionPolicy(top_k=4), team=3) if e.id >= 100]
    assert unrated[:20] == list(range(100, 120))


def test_an_image_the_per_prompt_cap_or_a_near_copy_excludes_is_settled_out():
    """Three raters. Prompt 'a' has two images accepted 3-0 and a third at 1-0: even if both
    others accept it, it ties them and ranks after them (older first), so with a cap of 2 it can
    never be chosen. Likewise an image 1 bit from a 3-0 image: a near-copy of a better one."""
    images = [
        ImageVotes(1, 3, 0, None, "a", "ffff000000000000"),
        ImageVotes(2, 3, 0, None, "a", "00000000ffff0000"),
        ImageVotes(3, 1, 0, None, "a", "000000000000ffff"),
        ImageVotes(4, 3, 0, None, "b", "0f0f0f0f00000000"),
        ImageVotes(5, 1, 0, None, "c", "0f0f0f0f00000001"),  # a re-encode of #4
        *[ImageVotes(6 + i, 0, 0, None, "d", None) for i in range(3)],
    ]
    capped = SelectionPolicy(top_k=24, max_per_prompt=2)
    order = ids(uncertainty_order(images, capped, team=3))
    assert 3 not in order and 5 not in order and {6, 7, 8} <= set(order)
    firm = settledness(images, capped, team=3)
    assert firm.undecided == 0
    # without the cap, or without the twin's hash, the same votes could still bring each in
    from herdbook.feedback.queueing import Votes, rule_bounds

    can_in, _ = rule_bounds(Votes.of(images), capped, team=3)
    assert not can_in[2] and not can_in[4]
    assert rule_bounds(Votes.of(images), SelectionPolicy(top_k=24, max_per_prompt=8), team=3)[0][2]
    unhashed = [ImageVotes(i.id, i.accepts, i.rejects, None, i.prompt, None) for i in images]
    assert rule_bounds(Votes.of(unhashed), capped, team=3)[0][4]


def test_the_rule_bounds_agree_with_the_selection_over_every_outcome_of_a_small_project():
    """The bounds say an image could go in (or out) exactly when some way the remaining votes
    fall makes select_instance_images take it (or leave it): checked by enumerating every outcome."""
    import itertools

    from herdbook.feedback.queueing import Votes, rule_bounds

    images = [
        ImageVotes(1, 2, 0, None, "a"),
        ImageVotes(2, 1, 0, None, "a"),
        ImageVotes(3, 1, 1, None, "b"),
        ImageVotes(4, 0, 1, None, "b"),
        ImageVotes(5, 0, 0, None, "c"),
    ]
    policy, team = SelectionPolicy(top_k=2, max_per_prompt=1, min_votes=2), 3
    ever_in, ever_out = set(), set()
    per_image = [range(team - i.accepts - i.rejects + 1) for i in images]  # how many more vote
    for more in itertools.product(*per_image):
        for accepted in itertools.product(*[range(m + 1) for m in more]):
            world = [
                ImageVotes(i.id, i.accepts + a, i.rejects + m - a, None, i.prompt)
                for i, m, a in zip(images, more, accepted, strict=True)
            ]
            chosen = select_ids(world, policy)
            ever_in |= chosen
            ever_out |= {i.id for i in images} - chosen
    can_in, can_out = rule_bounds(Votes.of(images), policy, team)
    assert {i.id for i, yes in zip(images, can_in, strict=True) if yes} == ever_in
    assert {i.id for i, yes in zip(images, can_out, strict=True) if yes} == ever_out


def test_settledness_says_in_one_sentence_what_could_still_change():
    images = project((3, 0), (1, 0), (1, 1), *[(0, 2)] * 20, unrated=40)
    firm = settledness(images, POLICY, team=3)
    text = firm.describe()
    assert text.startswith(f"{firm.could_drop} of the 2 selected could still drop out") and firm.could_drop >= 1
    assert f"better images may hide among the {firm.unrated_open} unrated" in text  # 2 selected of 2 wanted
    done = settledness(project(*[(3, 0)] * 2, *[(0, 3)] * 5), POLICY, team=3)
    assert re.match(
        r"all 2 selected are settled in \(an estimated \d+% of them good, 100% expected to stay", done.describe()
    )


def test_the_estimated_precision_is_the_models_own_expectation_on_a_small_fixture():
    """Two selected images, 3-0 and 2-1, beside two rejected ones: the prior's mean is the
    project's accept share (5 of 10), worth two votes; each selected image is good with its
    posterior mass above 1/2, integrated here on a grid rather than through scipy."""
    import numpy as np

    firm = settledness(project((3, 0), (2, 1), (0, 2), (0, 2)), POLICY)
    share = 5 / 10
    grid = np.linspace(0, 1, 400_001)[1:-1]

    def good(accepts, rejects):
        a, b = 2 * share + accepts, 2 * (1 - share) + rejects
        density = grid ** (a - 1) * (1 - grid) ** (b - 1)
        return density[grid > 0.5].sum() / density.sum()

    assert firm.selected == 2
    assert firm.expected_precision == pytest.approx((good(3, 0) + good(2, 1)) / 2, abs=1e-3)
    assert "an estimated" in firm.describe() and f"{firm.expected_precision:.0%} of them good" in firm.describe()


def test_an_image_whose_only_vote_weighs_nothing_stays_open_like_an_unrated_one():
    """A spammer's lone accept weighs ~0: the image's posterior is the prior's, and it must stay
    open as the unrated do. A normal tail of that posterior settled such images out, and in the
    scenario benchmark good images were never looked at again."""
    import numpy as np
    from herdbook.feedback.queueing import Votes, rank

    n = 60
    accepts_cast = np.array([5.0] * 24 + [1.0] + [0.0] * 35)
    rejects_cast = np.array([0.0] * 25 + [2.0] * 35)
    weighed_accepts = accepts_cast.copy()
    weighed_accepts[24] = 0.0  # the spammer's
    votes = Votes(np.arange(1, n + 1), weighed_accepts, rejects_cast, None, None, accepts_cast, rejects_cast)
    ranking = rank(votes, SelectionPolicy(top_k=24), team=8)
    assert 24 in ranking.order  # index 24: image #25


def test_many_images_each_rejected_twice_are_not_all_settled_out():
    """One image rejected twice is 99% sure to be out; four hundred of them together hide three
    good ones the raters got wrong, so the surest settle only while together they are expected
    to hold fewer than one image above the cut. (A team of twelve: votes to come could still
    bring any of them in.)"""
    from herdbook.feedback.queueing import SETTLED_TOGETHER, Votes, _model

    few = Votes.of(project(*[(5, 0)] * 8, *[(0, 4)] * 40))  # together 0.46 above the cut
    assert not _model(few, SelectionPolicy(top_k=8), team=12).is_open[8:].any()
    many = Votes.of(project(*[(5, 0)] * 8, *[(0, 2)] * 400))
    model = _model(many, SelectionPolicy(top_k=8), team=12)
    reopened = model.is_open[8:]
    assert 0 < reopened.sum() < 400
    assert model.uncertain[8:][~reopened].sum() < SETTLED_TOGETHER


def test_the_selection_over_arrays_is_the_one_select_makes():
    """``expected to stay`` reruns the selection on simulated futures over arrays: it must take
    what select_instance_images takes (weighed evidence, the per-prompt cap, near-copies)."""
    import numpy as np
    from herdbook.feedback.queueing import Votes, current_selection

    rng = np.random.default_rng(3)
    for _ in range(20):
        n = 80
        cast = rng.integers(0, 5, (2, n)).astype(float)
        weighed = cast * rng.uniform(0.2, 1.0, (2, n))
        prompts = np.array([f"p{i % 7}" for i in range(n)], dtype=object)
        hashes = rng.choice(np.array([0, 0xFF00, 0xFF01, 0xF0F0F0, 0x0F0F0F00], dtype=np.uint64), n)
        votes = Votes(np.arange(1, n + 1), *weighed, prompts, hashes, *cast)
        policy = SelectionPolicy(top_k=int(rng.integers(1, 20)), max_per_prompt=3, min_votes=int(rng.integers(0, 3)))
        assert current_selection(votes, policy) == select_ids(votes, policy)


def test_expected_to_stay_is_the_share_the_selection_keeps_after_the_votes_to_come():
    """Thirty images accepted 3-0, K = 24, a team of four, a hundred images rejected 0-4 (so the
    prior's accept share is 90 of 490). Each of the thirty gets one more vote, accepted with its
    posterior mean; the selection then takes the images at 4-0 oldest first, then those at 3-1.
    The share of today's 24 (the oldest) that stays, simulated here by that plain rule, is what
    settledness must say. The posterior mass above the cut said 0.54 where 0.83 stay."""
    import numpy as np

    images = project(*[(3, 0)] * 30, *[(0, 4)] * 100)
    firm = settledness(images, SelectionPolicy(top_k=24), team=4)
    p_accept = (2 * 90 / 490 + 3) / (2 + 3)
    accepted = np.random.default_rng(0).random((20_000, 30)) < p_accept
    n_accepted = accepted.sum(axis=1, keepdims=True)
    place = np.where(accepted, np.cumsum(accepted, axis=1), n_accepted + np.cumsum(~accepted, axis=1))
    kept = (place[:, :24] <= 24).mean(axis=1)
    assert firm.selected == 24
    assert firm.expected_survivors == pytest.approx(kept.mean(), abs=0.03)


def test_the_votes_to_come_stop_where_the_queue_stops_asking():
    """``expected to stay`` draws each open image's votes one at a time and stops once the image
    is sure of its side of the cut, as the queue does: drawing every vote to come at once read
    10-17 points low where most images settle after one more. Image 0 is sure whatever one more
    vote says (50 accepts, 1 reject, cut 1/2); image 1 (Beta(1, 1)) never is after one vote."""
    import numpy as np
    from herdbook.feedback.queueing import _VotesToCome

    votes_to_come = _VotesToCome(np.array([50.0, 1.0]), np.array([1.0, 1.0]), np.array([8, 8]), 1.0, 0.5)
    rng = np.random.default_rng(0)
    cast = np.array([sum(votes_to_come.draw(rng)) for _ in range(200)])
    assert (cast[:, 0] == 1).all()
    assert (cast[:, 1] >= 2).all() and (cast[:, 1] <= 8).all() and (cast[:, 1] < 8).any()
    # Beta(1 + k, 1 + j) is sure of its side only once |k - j| is large: no vote after that
    for cast, table in votes_to_come.known.items():
        for k in np.flatnonzero(table[:, 1] == 1):
            assert abs(int(k) - (cast - int(k))) >= 3


def test_an_image_no_run_of_votes_could_settle_gets_every_vote_to_come():
    """Votes that weigh next to nothing (a spammer's team) never settle an image, whatever they
    say: the simulation gives it all its votes without asking, which keeps a 50,000-image
    project's settledness near a second."""
    import numpy as np
    from herdbook.feedback.queueing import _VotesToCome

    votes_to_come = _VotesToCome(np.array([1.0, 1.0]), np.array([1.0, 1.0]), np.array([5, 5]), 0.01, 0.5)
    assert not votes_to_come.settles.any()
    accepts, rejects = votes_to_come.draw(np.random.default_rng(0))
    assert (accepts + rejects == 5).all()


def test_raters_who_load_their_pages_a_few_votes_apart_get_different_images():
    """Every vote shifts the shared order; spread by position, a page read one vote later took
    half of the page read before it. An image's next vote is one rater's turn (its id plus its
    votes cast), which a shifted order does not move."""
    import numpy as np
    from herdbook.feedback.queueing import Votes, next_for, rank

    policy, team = SelectionPolicy(top_k=8), 4
    images = project((3, 0), (2, 1), *[(0, 2)] * 10, unrated=60)
    allowed = np.ones(len(images), dtype=bool)
    pages = []
    for rater in range(team):
        pages.append({e.id for e in next_for(rank(Votes.of(images), policy, team), allowed, rater, team, 10)[0]})
        first = min(pages[-1]) - 1  # this rater votes on an image of their page (ids count from 1)
        a, r = images[first].accepts, images[first].rejects
        images[first] = ImageVotes(images[first].id, a, r + 1, None, images[first].prompt)
    assert all(len(page) == 10 for page in pages)
    assert not any(pages[i] & pages[j] for i in range(team) for j in range(i + 1, team))


def test_a_full_selection_of_lone_accepts_gets_second_opinions_before_the_unrated():
    """Four images each accepted once fill a top 4: a fifth image's lone accept could only tie
    with them, so a team's next votes go to the selected ones, where a reject takes one out."""
    policy = SelectionPolicy(top_k=4, min_votes=1)
    images = project((1, 0), (1, 0), (1, 0), (1, 0), (0, 1), unrated=6)
    order = uncertainty_order(images, policy, team=3)
    assert set(ids(order[:4])) == {1, 2, 3, 4}
    assert all(e.reason == "in the top 4 on one accept: a second opinion" for e in order[:4])
    assert ids(order[4:]) and set(ids(order[4:])) <= {5, 6, 7, 8, 9, 10, 11}
    # a lone curator has no second opinion to give, and a selection not yet full wants filling
    assert set(ids(uncertainty_order(images, policy, team=1)[:4])) != {1, 2, 3, 4}
    not_full = project((1, 0), (1, 0), (0, 1), unrated=6)
    assert ids(uncertainty_order(not_full, policy, team=3))[0] not in {1, 2}


def test_the_estimated_precision_counts_the_votes_as_cast_not_as_weighed():
    """Three raters who each weigh half a vote still make a 3-0 image look as good as three
    typical raters do: weighed evidence read 0.61 where 0.80 of the selected were good."""
    import numpy as np
    from herdbook.feedback.queueing import Votes

    ids = np.arange(1, 5)
    cast = np.array([3.0, 2.0, 0.0, 0.0]), np.array([0.0, 1.0, 2.0, 2.0])
    plain = Votes(ids, *cast, accepts_cast=cast[0], rejects_cast=cast[1])
    weighed = Votes(ids, cast[0] * 0.5, cast[1] * 0.5, accepts_cast=cast[0], rejects_cast=cast[1])
    assert settledness(weighed, POLICY).expected_precision == pytest.approx(
        settledness(plain, POLICY).expected_precision
    )
    assert settledness(plain, POLICY).expected_precision == pytest.approx(
        settledness(project((3, 0), (2, 1), (0, 2), (0, 2)), POLICY).expected_precision
    )
