"""How reliable each rater is, judged by how they agree with the others: a Dawid-Skene model
(Dawid & Skene, 1979) over accept/reject votes, fitted by EM.

Each image is good or bad (unknown); each rater accepts a good image with their own
*sensitivity* and rejects a bad one with their own *specificity*. Only images that two or more
raters voted on tell anything about a rater, so only those move the estimates; a Beta prior on
both (mean 0.8) keeps a newcomer, or a rater who shares few images, near a typical rater. A rater
who accepts everything has sensitivity near 1 and specificity near 0: their accept says nothing,
and their weight (Youden's J, sensitivity + specificity - 1, against the prior's) falls to ~0.

Plain functions over plain tuples: no database here."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass

PRIOR_MEAN = 0.8  # a typical rater's sensitivity and specificity, before any shared image
PRIOR_STRENGTH = 4.0  # worth this many shared images
PRIOR_J = 2 * PRIOR_MEAN - 1


@dataclass(frozen=True)
class RaterReliability:
    name: str
    sensitivity: float  # P(accepts | the image is good)
    specificity: float  # P(rejects | the image is bad)
    shared_images: int  # images this rater voted on that another rater voted on too
    weight: float  # how much one of their votes tells, 0..1: a typical rater 1, one who accepts all ~0

    def as_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _estimate(hits: float, total: float) -> float:
    """The Beta posterior mean of a rate from ``hits`` of ``total`` (soft counts)."""
    a = PRIOR_MEAN * PRIOR_STRENGTH
    return (hits + a) / (total + PRIOR_STRENGTH)


def _log_odds(votes: list[tuple[str, bool]], rates: dict[str, tuple[float, float]], prior_good: float) -> float:
    total = math.log(prior_good / (1 - prior_good))
    for rater, accepted in votes:
        sensitivity, specificity = rates[rater]
        if accepted:
            total += math.log(sensitivity / (1 - specificity))
        else:
            total += math.log((1 - sensitivity) / specificity)
    return total


def reliability(
    votes: Iterable[tuple[int, str, bool]], iterations: int = 50
) -> tuple[dict[str, RaterReliability], dict[int, float]]:
    """From (image, rater, accepted) votes: each rater's reliability, and each image's
    probability of being good under the fitted model."""
    by_image: dict[int, list[tuple[str, bool]]] = defaultdict(list)
    for image, rater, accepted in votes:
        by_image[image].append((rater, bool(accepted)))
    raters = sorted({rater for cast in by_image.values() for rater, _ in cast})
    shared = {image: cast for image, cast in by_image.items() if len({r for r, _ in cast}) > 1}
    # start from each image's share of accepts, then alternate: images from raters, raters from images
    good = {image: sum(a for _, a in cast) / len(cast) for image, cast in by_image.items()}
    rates = {rater: (PRIOR_MEAN, PRIOR_MEAN) for rater in raters}
    prior_good = 0.5
    for _ in range(iterations):
        counts = {rater: [0.0, 0.0, 0.0, 0.0] for rater in raters}  # accepts of good, good, rejects of bad, bad
        for image, cast in shared.items():
            for rater, accepted in cast:
                tally = counts[rater]
                tally[0] += good[image] * accepted
                tally[1] += good[image]
                tally[2] += (1 - good[image]) * (not accepted)
                tally[3] += 1 - good[image]
        rates = {r: (_estimate(c[0], c[1]), _estimate(c[2], c[3])) for r, c in counts.items()}
        prior_good = min(0.95, max(0.05, sum(good.values()) / len(good))) if good else 0.5
        good = {image: 1 / (1 + math.exp(-_log_odds(cast, rates, prior_good))) for image, cast in by_image.items()}
    shared_count = defaultdict(int)
    for cast in shared.values():
        for rater in {r for r, _ in cast}:
            shared_count[rater] += 1
    estimates = {
        rater: RaterReliability(
            rater,
            sensitivity,
            specificity,
            shared_count[rater],
            min(1.0, max(0.0, (sensitivity + specificity - 1) / PRIOR_J)),
        )
        for rater, (sensitivity, specificity) in rates.items()
    }
    return estimates, good
