"""Raters weighed by how they agree with the others (Dawid-Skene), on hand-made teams."""

import random

import pytest
from herdbook.feedback.reliability import PRIOR_MEAN, reliability


def team_votes(raters: dict[str, tuple[float, float]], images: int = 40, seed: int = 0):
    """Half the images good; each rater accepts a good one with their sensitivity and rejects a
    bad one with their specificity."""
    rng = random.Random(seed)
    votes, truth = [], {}
    for image in range(images):
        truth[image] = image % 2 == 0
        for name, (sensitivity, specificity) in raters.items():
            accepted = rng.random() < sensitivity if truth[image] else rng.random() >= specificity
            votes.append((image, name, accepted))
    return votes, truth


def test_a_rater_who_accepts_everything_weighs_less_than_an_honest_one():
    votes, _ = team_votes({"ann": (0.9, 0.9), "bob": (0.9, 0.85), "cai": (0.85, 0.9), "spam": (1.0, 0.0)})
    raters, _ = reliability(votes)
    assert raters["spam"].specificity < 0.3 and raters["spam"].weight < 0.2
    assert min(raters[name].weight for name in ("ann", "bob", "cai")) > 0.8
    assert raters["spam"].shared_images == 40


def test_raters_of_opposite_leniency_still_agree_on_the_order_of_clear_images():
    votes, truth = team_votes({"easy": (0.95, 0.6), "hard": (0.6, 0.95)}, images=60, seed=1)
    raters, good = reliability(votes)
    assert raters["easy"].sensitivity > raters["hard"].sensitivity
    assert raters["hard"].specificity > raters["easy"].specificity
    cast = {}
    for image, _, accepted in votes:
        cast.setdefault(image, []).append(accepted)
    both = [good[i] for i, v in cast.items() if all(v)]
    neither = [good[i] for i, v in cast.items() if not any(v)]
    assert both and neither and min(both) > max(neither)
    # split votes are coin flips for this pair (0.95 x 0.4 either way): mostly right is what is possible
    assert sum((good[i] > 0.5) == truth[i] for i in truth) >= 0.7 * len(truth)


def test_a_newcomer_with_no_shared_image_starts_as_a_typical_rater():
    votes, _ = team_votes({"ann": (0.9, 0.9), "bob": (0.9, 0.9)}, images=10)
    votes += [(100, "new", True), (101, "new", False)]  # images nobody else rated
    raters, _ = reliability(votes)
    new = raters["new"]
    assert new.shared_images == 0
    assert new.sensitivity == pytest.approx(PRIOR_MEAN) and new.specificity == pytest.approx(PRIOR_MEAN)
    assert new.weight == pytest.approx(1.0)


def test_no_votes_no_raters():
    assert reliability([]) == ({}, {})
