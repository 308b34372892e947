"""Which image a rater should see next: the policies of the rating queue, as plain functions.

The default, ``uncertainty``, spends each vote where it can still change the instance
selection (the top K). It is an index policy in the spirit of LUCB for top-K identification,
on Beta posteriors of each image's accept rate:

- Each image's accept rate has the posterior Beta(a0 + accepts, b0 + rejects). The prior's
  mean is the project's overall accept share (most generated images are rejected, so one
  reject is strong evidence and one accept a lead worth following) with the weight of
  ``PRIOR_WEIGHT`` votes.
- The cut lies halfway between the K-th and (K+1)-th best posterior means. An image's membership is uncertain while its
  posterior puts real mass on the other side of the cut: ``uncertainty`` is that mass (a
  normal approximation of the Beta, cheap for 50,000 images at once).
- Images below ``SETTLED`` are settled (clearly in or clearly out) and leave the queue.
  Selected images short of ``min_votes`` come first whatever their uncertainty; then the
  most uncertain. Unrated images all share the prior, and what matters is how many better
  ones hide among them: they stay open while they are expected to hold at least one image
  above the cut (their count times the prior's mass above it), so exploration goes on until
  the top K is confidently filled, and then stops costing votes.
- Raters are spread: each active rater takes every k-th image of the shared order first, so
  two raters are not handed the same unsettled image at once.

Why not Thompson sampling: it spreads votes as well, but a queue that reshuffles on every
page load is hard to explain to a rater, and the reason shown beside each image should be
the same one the command line prints. Why not plain Wilson intervals: at the 4-8 votes an
image can get (one per rater), a 95% interval almost never excludes the cut, so nothing
would ever settle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from herdbook.feedback.selection import RatedImage, SelectionPolicy, select_instance_images

POLICIES = ("uncertainty", "oldest", "newest-round", "most-alike")
DEFAULT_POLICY = "uncertainty"
PRIOR_WEIGHT = 2.0  # the prior counts as this many votes
SETTLED = 0.03  # an image whose membership is this sure (97%) is not shown again


@dataclass(frozen=True)
class ImageVotes:
    """What the queue knows of one image."""

    id: int
    accepts: int = 0
    rejects: int = 0
    round_id: int | None = None
    prompt: str = ""
    phash: str | None = None  # so the selection it is checked against drops near-copies, as `select` does


@dataclass(frozen=True)
class QueueEntry:
    id: int
    reason: str
    uncertainty: float | None = None  # the chance that more votes move it across the cut; None: not ranked by it


@dataclass(frozen=True)
class Settledness:
    """How firm the current selection is."""

    selected: int  # images in the current top K
    expected_survivors: float  # expected share of them that more votes would keep in the top K
    undecided: int  # images with votes whose membership is still uncertain
    unrated_open: int  # unrated images that could still belong in the top K
    settled: int  # images with votes that are settled in or out

    def describe(self) -> str:
        if not self.selected:
            return "no image selected yet"
        return (
            f"{self.expected_survivors:.0%} of the {self.selected} selected are expected to stay; "
            f"{self.undecided} rated image{'s' if self.undecided != 1 else ''} undecided, "
            f"{self.unrated_open} unrated still open"
        )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def votes_text(image: ImageVotes) -> str:
    return f"{_plural(image.accepts, 'accept')}, {_plural(image.rejects, 'reject')}"


@dataclass(frozen=True)
class Votes:
    """Every image's counts as arrays (what a 50,000-image project can rank in milliseconds)."""

    ids: np.ndarray
    accepts: np.ndarray
    rejects: np.ndarray

    @classmethod
    def of(cls, images: Sequence[ImageVotes]) -> Votes:
        n = len(images)
        return cls(
            np.fromiter((i.id for i in images), dtype=np.int64, count=n),
            np.fromiter((i.accepts for i in images), dtype=float, count=n),
            np.fromiter((i.rejects for i in images), dtype=float, count=n),
        )


@dataclass(frozen=True)
class Ranking:
    """The shared order of the open images and what each reason needs."""

    votes: Votes
    order: np.ndarray  # indices into votes, most useful vote first
    uncertainty: np.ndarray
    mean: np.ndarray
    cut: float
    short: np.ndarray  # bool: in the top K by posterior but short of min_votes
    top_k: int
    min_votes: int

    def entry(self, index: int) -> QueueEntry:
        v = self.votes
        accepts, rejects = int(v.accepts[index]), int(v.rejects[index])
        decisive = accepts + rejects
        image = ImageVotes(int(v.ids[index]), accepts, rejects)
        if self.short[index]:
            return QueueEntry(image.id, f"in the top {self.top_k} with {_plural(decisive, 'vote')} of {self.min_votes}")
        above = self.mean[index] >= self.cut
        if decisive == 0:
            reason = (
                f"unrated: the top {self.top_k} is not full yet"
                if above
                else f"unrated: the unrated may hold better than the top {self.top_k}"
            )
        else:
            reason = f"near the cut, {'in' if above else 'out'}: {votes_text(image)}"
        return QueueEntry(image.id, reason, round(float(self.uncertainty[index]), 3))


def posterior(votes: Votes) -> tuple[np.ndarray, np.ndarray, float]:
    """Posterior mean and standard deviation of each image's accept rate, and the prior's mean."""
    accepts, rejects = votes.accepts, votes.rejects
    decisive = accepts.sum() + rejects.sum()
    share = accepts.sum() / decisive if decisive else 0.5
    share = min(max(share, 0.02), 0.98)
    a = share * PRIOR_WEIGHT + accepts
    b = (1 - share) * PRIOR_WEIGHT + rejects
    mean = a / (a + b)
    std = np.sqrt(mean * (1 - mean) / (a + b + 1))
    return mean, std, share


def _cut(mean: np.ndarray, top_k: int) -> float:
    """Halfway between the K-th and the (K+1)-th best posterior means, as LUCB separates them."""
    if len(mean) <= top_k:
        return float(mean.min()) / 2 if len(mean) else 0.5
    kth, next_ = np.partition(mean, [-top_k - 1, -top_k])[[-top_k, -top_k - 1]]
    return float(kth + next_) / 2


_erfc = np.vectorize(math.erfc, otypes=[float])


def _tail(z: np.ndarray) -> np.ndarray:
    """P(Z > z) for a standard normal."""
    return 0.5 * _erfc(z / math.sqrt(2)) if len(z) else z


def prior_above(share: float, cut: float) -> float:
    """The prior's mass above the cut: P(Beta(share * w, (1 - share) * w) > cut), exactly. With
    most images rejected the prior is very skewed, and a normal approximation of it put 0.23 of
    1,000 unrated images above the cut where the Beta gives 14.9, so exploring stopped early."""
    from scipy.special import betaincc

    return float(betaincc(share * PRIOR_WEIGHT, (1 - share) * PRIOR_WEIGHT, min(max(cut, 0.0), 1.0)))


def _open(votes: Votes, mean: np.ndarray, std: np.ndarray, cut: float, share: float) -> tuple[np.ndarray, np.ndarray]:
    """Each image's uncertainty (its posterior mass across the cut), and whether it is still
    open. A rated image is open while its uncertainty is at least SETTLED; the unrated, all
    alike, while together they are expected to hold at least one image above the cut."""
    uncertain = _tail(np.abs(mean - cut) / np.maximum(std, 1e-9))
    is_open = uncertain >= SETTLED
    unrated = (votes.accepts + votes.rejects) == 0
    if unrated.any():
        above = prior_above(share, cut)
        uncertain[unrated] = min(above, 1 - above)  # the prior's mass across the cut
        first = int(np.argmax(unrated))
        # above the cut (a young project, fewer images than K) every unrated image is worth a look
        below = mean[first] < cut
        is_open[unrated] = not below or float(uncertain[first]) * unrated.sum() >= 1
    return uncertain, is_open


def ruled_out(votes: Votes, team: int | None) -> np.ndarray:
    """Rated images the selection can never take, whatever the rest of the ``team`` (every
    rater who could still vote on an image) says: even if all who have not voted on one accept
    it, its accepts are no majority. The posterior alone called a 0-of-3 image "near the cut"
    in a project with fewer good images than K, and showed it before the unrated ones."""
    if team is None:
        return np.zeros(len(votes.ids), dtype=bool)
    decisive = votes.accepts + votes.rejects
    could_come = np.maximum(team - decisive, 0)
    return (decisive > 0) & (votes.accepts + could_come <= votes.rejects)


def votes_complete(votes: Votes, team: int | None) -> np.ndarray:
    """Rated images every rater of the ``team`` has voted on: no vote can move them any more."""
    if team is None:
        return np.zeros(len(votes.ids), dtype=bool)
    decisive = votes.accepts + votes.rejects
    return (decisive > 0) & (decisive >= team)


def rank(votes: Votes, policy: SelectionPolicy, team: int | None = None) -> Ranking:
    """The open images in the order their next vote is most useful: first those in the top K
    (by posterior mean) with votes but short of ``min_votes``, then the most uncertain; fewer
    votes, then older, break ties. Settled images are left out, and so are images the rules
    exclude whatever the rest of the ``team`` (the raters there are) votes."""
    mean, std, share = posterior(votes)
    cut = _cut(mean, policy.top_k)
    uncertain, is_open = _open(votes, mean, std, cut, share)
    excluded = ruled_out(votes, team)
    is_open &= ~excluded
    decisive = votes.accepts + votes.rejects
    short = (mean >= cut) & (decisive > 0) & (decisive < policy.min_votes) & ~excluded
    candidates = np.flatnonzero(is_open | short)
    # np.lexsort sorts by its last key first
    keys = (votes.ids[candidates], decisive[candidates], -uncertain[candidates], ~short[candidates])
    order = candidates[np.lexsort(keys)]
    return Ranking(votes, order, uncertain, mean, cut, short, policy.top_k, policy.min_votes)


def spread_indices(order: np.ndarray, slot: int, raters: int) -> np.ndarray:
    """This rater's view of a shared order: every ``raters``-th entry from ``slot`` first, then
    the rest, so active raters start on different images and none is left unseen."""
    if raters <= 1:
        return order
    positions = np.arange(len(order)) % raters == slot % raters
    return np.concatenate([order[positions], order[~positions]])


def uncertainty_order(
    images: Sequence[ImageVotes], policy: SelectionPolicy, team: int | None = None
) -> list[QueueEntry]:
    """Every unsettled image, the most useful vote first (before spreading raters apart).
    ``images`` is every image the project has: the cut is computed over all of them."""
    ranking = rank(Votes.of(images), policy, team)
    return [ranking.entry(int(i)) for i in ranking.order]


def spread(order: Sequence[QueueEntry], slot: int, raters: int) -> list[QueueEntry]:
    """``spread_indices`` over a list of entries."""
    return [order[int(i)] for i in spread_indices(np.arange(len(order)), slot, raters)]


def next_for(ranking: Ranking, allowed: np.ndarray, slot: int, raters: int, limit: int) -> tuple[list[QueueEntry], int]:
    """A rater's next ``limit`` entries among the ``allowed`` images (bool per image), and how
    many open images their queue holds in all."""
    mine = spread_indices(ranking.order, slot, raters)
    mine = mine[allowed[mine]]
    return [ranking.entry(int(i)) for i in mine[:limit]], len(mine)


def current_selection(images: Sequence[ImageVotes], policy: SelectionPolicy) -> set[int]:
    from herdbook.feedback.scoring import Tally

    rated = [RatedImage(i.id, i.prompt, Tally(i.accepts, i.rejects), i.phash) for i in images if i.accepts + i.rejects]
    return {d.image.id for d in select_instance_images(rated, policy) if d.selected}


def settledness(images: Sequence[ImageVotes], policy: SelectionPolicy, team: int | None = None) -> Settledness:
    if not images:
        return Settledness(0, 0.0, 0, 0, 0)
    selected = current_selection(images, policy)
    votes = Votes.of(images)
    mean, std, share = posterior(votes)
    cut = _cut(mean, policy.top_k)
    _, open_ = _open(votes, mean, std, cut, share)
    open_ &= ~ruled_out(votes, team) & ~votes_complete(votes, team)
    voted = (votes.accepts + votes.rejects) > 0
    chosen = np.isin(votes.ids, list(selected))
    # a selected image stays while its accept rate lies above the cut: its posterior mass there;
    # once no vote can come for any image, the selection is final
    stays = _tail((cut - mean) / np.maximum(std, 1e-9)) if open_.any() else np.ones(len(mean))
    return Settledness(
        selected=int(chosen.sum()),
        expected_survivors=float(stays[chosen].mean()) if chosen.any() else 0.0,
        undecided=int((open_ & voted).sum()),
        unrated_open=int((open_ & ~voted).sum()),
        settled=int((~open_ & voted).sum()),
    )
