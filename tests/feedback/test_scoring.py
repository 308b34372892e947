import pytest
from herdbook.feedback.scoring import Tally, agreement, agreement_by_prompt, score, verdict, wilson_lower_bound


def test_wilson_bound_does_not_trust_few_votes():
    assert wilson_lower_bound(0, 0) == 0.0
    one = wilson_lower_bound(1, 1)
    five = wilson_lower_bound(5, 5)
    fifty = wilson_lower_bound(50, 50)
    assert 0.15 < one < five < fifty < 1
    assert wilson_lower_bound(9, 10) > wilson_lower_bound(1, 1)
    assert wilson_lower_bound(0, 10) == pytest.approx(0.0, abs=1e-12)


def test_wilson_bound_known_value():
    # 8 of 10 at 95%: the textbook lower bound is 0.4902
    assert wilson_lower_bound(8, 10) == pytest.approx(0.4902, abs=1e-4)


def test_wilson_bound_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_lower_bound(3, 2)


def test_skips_do_not_move_the_score():
    assert score(Tally(2, 1, 5)) == score(Tally(2, 1, 0))


@pytest.mark.parametrize(
    ("tally", "expected"),
    [
        (Tally(), "unrated"),
        (Tally(0, 0, 3), "unrated"),
        (Tally(2, 1), "accepted"),
        (Tally(1, 2), "rejected"),
        (Tally(1, 1), "tied"),
    ],
)
def test_verdict(tally, expected):
    assert verdict(tally) == expected


def test_agreement_perfect_chance_and_none():
    perfect = agreement([Tally(3, 0), Tally(0, 3), Tally(3, 0)])
    assert perfect.pairwise == 1.0 and perfect.fleiss_kappa == pytest.approx(1.0)
    split = agreement([Tally(1, 1), Tally(1, 1)])
    assert split.pairwise == 0.0 and split.fleiss_kappa < 0
    assert agreement([Tally(1, 0)]).fleiss_kappa is None  # one vote per image: nothing to agree on


def test_fleiss_kappa_matches_a_hand_computation():
    # two items, 4 raters each: 4-0 and 2-2.  P1 = 1, P2 = (2+2)/12 = 1/3, P̄ = 2/3
    # pA = 6/8, pR = 2/8, Pe = 0.625; kappa = (2/3 - 0.625) / 0.375 = 0.1111
    result = agreement([Tally(4, 0), Tally(2, 2)])
    assert result.items == 2
    assert result.fleiss_kappa == pytest.approx(0.1111, abs=1e-4)


def test_agreement_by_prompt_keeps_prompts_apart():
    result = agreement_by_prompt({"a": [Tally(2, 0)], "b": [Tally(1, 1)]})
    assert result["a"].pairwise == 1.0 and result["b"].pairwise == 0.0
