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
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

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


def reliability(
    votes: Iterable[tuple[int, str, bool]], iterations: int = 50
) -> tuple[dict[str, RaterReliability], dict[int, float]]:
    """From (image, rater, accepted) votes: each rater's reliability, and each image's
    probability of being good under the fitted model."""
    cast = list(votes)
    if not cast:
        return {}, {}
    image_ids, image = np.unique(np.array([v[0] for v in cast], dtype=np.int64), return_inverse=True)
    names, rater = np.unique(np.array([v[1] for v in cast], dtype=object), return_inverse=True)
    accepted = np.array([bool(v[2]) for v in cast])
    fitted = fit(image, rater, accepted, len(image_ids), len(names), iterations)
    estimates = {
        str(name): RaterReliability(
            str(name),
            float(fitted.sensitivity[r]),
            float(fitted.specificity[r]),
            int(fitted.shared[r]),
            float(fitted.weight[r]),
        )
        for r, name in enumerate(names)
    }
    return estimates, {int(i): float(p) for i, p in zip(image_ids, fitted.good, strict=True)}


def weighed_sums(
    image_ids: np.ndarray, rater_ids: np.ndarray, accepted: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accept and reject votes as arrays (rater ids or names) -> each voted image's id, and its
    accepts and rejects, each vote weighing its rater's weight. The one place votes are weighed:
    the queue, the selection and the candidate list all call it."""
    accepted = np.asarray(accepted, dtype=bool)
    if not len(image_ids):
        return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0)
    images, image = np.unique(image_ids, return_inverse=True)
    raters, rater = np.unique(rater_ids, return_inverse=True)
    weight = fit(image, rater, accepted, len(images), len(raters)).weight[rater]
    sums = [np.bincount(image, weights=weight * side, minlength=len(images)) for side in (accepted, ~accepted)]
    return images, *sums


def weighed_by_image(image_ids, rater_ids, accepted) -> dict[int, tuple[float, float]]:
    """``weighed_sums`` as a mapping: image id -> (weighed accepts, weighed rejects)."""
    images, accepts, rejects = weighed_sums(np.asarray(image_ids), np.asarray(rater_ids), accepted)
    return dict(zip(images.tolist(), zip(accepts.tolist(), rejects.tolist(), strict=True), strict=True))


@dataclass(frozen=True)
class Fitted:
    sensitivity: np.ndarray  # per rater
    specificity: np.ndarray
    shared: np.ndarray  # per rater: images someone else voted on too
    weight: np.ndarray
    good: np.ndarray  # per image: the probability it is good


def fit(
    image: np.ndarray, rater: np.ndarray, accepted: np.ndarray, n_images: int, n_raters: int, iterations: int = 50
) -> Fitted:
    """Dawid-Skene by EM over votes given as index arrays (``image``, ``rater``: 0..n-1), in
    array arithmetic; it stops once no image's probability moves by 1e-4."""
    per_image = np.bincount(image, minlength=n_images)
    shared = per_image[image] > 1  # a vote on an image someone else voted on too
    # start from each image's share of accepts, then alternate: raters from images, images from raters
    good = np.bincount(image, weights=accepted, minlength=n_images) / np.maximum(per_image, 1)
    sensitivity = specificity = np.full(n_raters, PRIOR_MEAN)
    a = PRIOR_MEAN * PRIOR_STRENGTH
    rejected = ~accepted
    for _ in range(iterations):
        g = good[image] * shared
        b = shared - g
        sensitivity = (np.bincount(rater, weights=g * accepted, minlength=n_raters) + a) / (
            np.bincount(rater, weights=g, minlength=n_raters) + PRIOR_STRENGTH
        )
        specificity = (np.bincount(rater, weights=b * rejected, minlength=n_raters) + a) / (
            np.bincount(rater, weights=b, minlength=n_raters) + PRIOR_STRENGTH
        )
        prior_good = min(0.95, max(0.05, float(good.mean())))
        on_accept = np.log(sensitivity / (1 - specificity))
        on_reject = np.log((1 - sensitivity) / specificity)
        evidence = np.where(accepted, on_accept[rater], on_reject[rater])
        log_odds = math.log(prior_good / (1 - prior_good)) + np.bincount(image, weights=evidence, minlength=n_images)
        moved, good = good, 1 / (1 + np.exp(-log_odds))
        if np.abs(good - moved).max() < 1e-4:
            break
    weight = np.clip((sensitivity + specificity - 1) / PRIOR_J, 0.0, 1.0)
    return Fitted(sensitivity, specificity, np.bincount(rater, weights=shared, minlength=n_raters), weight, good)
