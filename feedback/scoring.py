"""Turning votes into scores. Plain functions over plain numbers: no database here.

Only accept and reject votes count toward a score; a skip says "no opinion".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tally:
    accepts: int = 0
    rejects: int = 0
    skips: int = 0
    # the accepts and rejects weighed by each rater's reliability (feedback.reliability), when the
    # project weighs raters; the score and the verdict rest on them, min_votes on the votes cast
    weighed: tuple[float, float] | None = None

    @property
    def evidence(self) -> tuple[float, float]:
        return self.weighed if self.weighed is not None else (self.accepts, self.rejects)

    @property
    def decisive(self) -> int:
        return self.accepts + self.rejects

    @property
    def raters(self) -> int:
        return self.accepts + self.rejects + self.skips


def wilson_lower_bound(accepts: int, total: int, z: float = 1.96) -> float:
    """Lower end of the Wilson score interval for the accept rate (95% by default).

    One accept scores 0.21, five out of five 0.57, fifty out of fifty 0.93: an image needs
    several agreeing votes before it outranks a well-liked one, which is what keeps a single
    lucky vote from filling the training set."""
    if total <= 0:
        return 0.0
    if not 0 <= accepts <= total:
        raise ValueError(f"accepts ({accepts}) must lie between 0 and total ({total})")
    phat = accepts / total
    z2 = z * z
    centre = phat + z2 / (2 * total)
    spread = z * math.sqrt((phat * (1 - phat) + z2 / (4 * total)) / total)
    return max(0.0, (centre - spread) / (1 + z2 / total))


def wilson_lower_bounds(accepts: np.ndarray, total: np.ndarray, z: float = 1.96) -> np.ndarray:
    """``wilson_lower_bound`` of many images at once (the queue bounds a whole project's)."""
    total = np.asarray(total, dtype=float)
    safe = np.where(total > 0, total, 1.0)
    phat = np.asarray(accepts, dtype=float) / safe
    z2 = z * z
    centre = phat + z2 / (2 * safe)
    spread = z * np.sqrt((phat * (1 - phat) + z2 / (4 * safe)) / safe)
    return np.where(total > 0, np.maximum(0.0, (centre - spread) / (1 + z2 / safe)), 0.0)


def score(tally: Tally) -> float:
    accepts, rejects = tally.evidence
    return wilson_lower_bound(accepts, accepts + rejects)


def verdict(tally: Tally) -> str:
    """'accepted' or 'rejected' where most decisive votes say so, 'tied' on a tie, 'unrated' without votes."""
    if tally.decisive == 0:
        return "unrated"
    accepts, rejects = tally.evidence
    if accepts > rejects:
        return "accepted"
    if rejects > accepts:
        return "rejected"
    return "tied"


@dataclass(frozen=True)
class Agreement:
    items: int  # images with at least two decisive votes
    pairwise: float | None  # share of rater pairs that agree on an image
    fleiss_kappa: float | None  # agreement beyond chance; 1 perfect, 0 chance, < 0 worse


def agreement(tallies: Iterable[Tally]) -> Agreement:
    """Fleiss' kappa over accept/reject, generalised to images with different numbers of raters
    (each image's observed agreement is the share of its rater pairs that agree)."""
    observed = []
    accepts_total = rejects_total = 0
    for tally in tallies:
        n = tally.decisive
        if n < 2:
            continue
        pairs_agreeing = tally.accepts * (tally.accepts - 1) + tally.rejects * (tally.rejects - 1)
        observed.append(pairs_agreeing / (n * (n - 1)))
        accepts_total += tally.accepts
        rejects_total += tally.rejects
    if not observed:
        return Agreement(0, None, None)
    p_bar = sum(observed) / len(observed)
    total = accepts_total + rejects_total
    p_expected = (accepts_total / total) ** 2 + (rejects_total / total) ** 2
    kappa = 1.0 if p_expected == 1 else (p_bar - p_expected) / (1 - p_expected)
    return Agreement(len(observed), p_bar, kappa)


def agreement_by_prompt(tallies: Mapping[str, Iterable[Tally]]) -> dict[str, Agreement]:
    return {prompt: agreement(group) for prompt, group in tallies.items()}


def auc(accepted: Iterable[float], rejected: Iterable[float]) -> float | None:
    """How often a metric ranks an accepted image above a rejected one (ties count half): the
    area under its ROC curve. 1.0: the metric sorts them as the team does; 0.5: no better than
    chance. None until there is at least one of each."""
    accepted, rejected = list(accepted), list(rejected)
    if not accepted or not rejected:
        return None
    ordered = sorted([(value, True) for value in accepted] + [(value, False) for value in rejected])
    rank_sum, start = 0.0, 0  # Mann-Whitney: the accepted images' ranks, ties given their mean rank
    while start < len(ordered):
        end = start
        while end < len(ordered) and ordered[end][0] == ordered[start][0]:
            end += 1
        mean_rank = (start + 1 + end) / 2
        rank_sum += mean_rank * sum(1 for _, is_accepted in ordered[start:end] if is_accepted)
        start = end
    n_accepted, n_rejected = len(accepted), len(rejected)
    return (rank_sum - n_accepted * (n_accepted + 1) / 2) / (n_accepted * n_rejected)
