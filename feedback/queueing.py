"""Which image a rater should see next: the policies of the rating queue, as plain functions.

The default, ``uncertainty``, spends each vote where it can still change the instance
selection (the top K). It is an index policy in the spirit of LUCB for top-K identification,
on Beta posteriors of each image's accept rate:

- Each image's accept rate has the posterior Beta(a0 + accepts, b0 + rejects). The prior's
  mean is the accept share of the round that drew the image, drawn toward the project's
  (most generated images are rejected, so one reject is strong evidence and one accept a lead
  worth following), with the weight of ``PRIOR_WEIGHT`` votes: a better model's first accepts
  make its unrated images worth a look before more doubts about an older round's.
- The cut lies halfway between the K-th and (K+1)-th best posterior means. An image's
  membership is uncertain while its posterior puts real mass on the other side of the cut:
  ``uncertainty`` is that mass (the Beta's exact tail, one scipy call for 50,000 images).
- Images below ``SETTLED`` are settled (clearly in or clearly out) and leave the queue, as long
  as all the settled together are expected to hold fewer than one image on the wrong side.
  Selected images short of ``min_votes`` come first whatever their uncertainty, and so, once
  the selection is full, do those one accept put there (a team's second opinion); then the
  most uncertain. Unrated images of a round share its prior, and what matters is how many
  better ones hide among them: they stay open while they are expected to hold at least one image
  above the cut (the sum of their priors' mass above it), so exploration goes on until
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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from herdbook.feedback.selection import SelectionPolicy

POLICIES = ("uncertainty", "oldest", "newest-round", "most-alike")
DEFAULT_POLICY = "uncertainty"
PRIOR_WEIGHT = 2.0  # the prior counts as this many votes
SOURCE_PRIOR_WEIGHT = 20.0  # a source's accept share is drawn toward the project's by this many votes
SETTLED = 0.03  # an image this sure (97%) of its side of the cut may settle...
SETTLED_TOGETHER = 1.0  # ...while all the settled together are expected to hold fewer than one on the wrong side
STAY_DRAWS = 64  # simulated futures behind "expected to stay"


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
    could_drop: int = 0  # selected images more votes could still take out
    unrated_better: float = 0.0  # how many of the open unrated are expected to beat the cut
    # the expected share of the selected that are good, i.e. that most raters would accept:
    # each one's posterior mass above an accept rate of 1/2 (what the selection's majority rule
    # asks), from the votes as cast
    expected_precision: float = 0.0
    wanted: int = 0  # K: with fewer selected, the unrated may fill the set rather than beat it

    def describe(self) -> str:
        """One sentence: what could still change, then the figures it rests on."""
        if not self.selected:
            first = "no image selected yet"
        elif self.could_drop:
            first = f"{self.could_drop} of the {self.selected} selected could still drop out"
        else:
            first = f"all {self.selected} selected are settled in"
        if self.unrated_open and self.unrated_better >= 0.5:
            better = round(self.unrated_better)
            noun = "image" if better == 1 else "images"
            kind = f"{better} better {noun}" if self.selected >= self.wanted else f"{better} {noun} good enough to join"
            first += f"; about {kind} may hide among the {self.unrated_open} unrated"
        if not self.selected:
            return first
        return (
            f"{first} (an estimated {self.expected_precision:.0%} of them good, "
            f"{self.expected_survivors:.0%} expected to stay; "
            f"{_plural(self.undecided, 'rated image')} undecided, {self.unrated_open} unrated still open)"
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
    prompts: np.ndarray | None = None  # what the per-prompt cap counts; None: no image shares one
    hashes: np.ndarray | None = None  # perceptual hashes as uint64, 0 where there is none
    # accepts and rejects as cast, where ``accepts``/``rejects`` are weighed by rater reliability
    accepts_cast: np.ndarray | None = None
    rejects_cast: np.ndarray | None = None
    # where each image came from (the round that drew it; -1 for none): images from one source
    # share a prior, so a better model's first accepts raise its unrated images' prospects
    sources: np.ndarray | None = None

    @property
    def cast(self) -> tuple[np.ndarray, np.ndarray]:
        """The accept and reject votes as cast: what min_votes and the raters still to come count."""
        if self.accepts_cast is None:
            return self.accepts, self.rejects
        return self.accepts_cast, self.rejects_cast

    @property
    def decisive(self) -> np.ndarray:
        accepts, rejects = self.cast
        return accepts + rejects

    @classmethod
    def of(cls, images: Sequence[ImageVotes]) -> Votes:
        n = len(images)
        return cls(
            np.fromiter((i.id for i in images), dtype=np.int64, count=n),
            np.fromiter((i.accepts for i in images), dtype=float, count=n),
            np.fromiter((i.rejects for i in images), dtype=float, count=n),
            np.array([i.prompt for i in images], dtype=object),
            hash_array(i.phash for i in images),
            sources=source_array(i.round_id for i in images),
        )


def source_array(round_ids) -> np.ndarray:
    """The rounds that drew the images as int64, -1 for the base model's and imported ones."""
    return np.array([-1 if r is None else r for r in round_ids], dtype=np.int64)


def hash_array(phashes) -> np.ndarray:
    """Hex perceptual hashes as uint64 (0 for none: a real hash of 0 bits would be a blank image)."""
    return np.array([int(h, 16) if h else 0 for h in phashes], dtype=np.uint64)


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
    lone: np.ndarray  # bool: selected on one vote, in a full selection (lone_accepts)

    def entry(self, index: int) -> QueueEntry:
        v = self.votes
        accepts, rejects = (int(count[index]) for count in v.cast)
        decisive = accepts + rejects
        image = ImageVotes(int(v.ids[index]), accepts, rejects)
        if self.short[index]:
            return QueueEntry(image.id, f"in the top {self.top_k} with {_plural(decisive, 'vote')} of {self.min_votes}")
        if self.lone[index]:
            reason = f"in the top {self.top_k} on one accept: a second opinion"
            return QueueEntry(image.id, reason, round(float(self.uncertainty[index]), 3))
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


@dataclass(frozen=True)
class Posterior:
    """Each image's accept rate as Beta(a, b): the prior (worth PRIOR_WEIGHT votes) plus its
    weighed accepts and rejects."""

    a: np.ndarray
    b: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        return self.a / (self.a + self.b)

    def above(self, cut: float) -> np.ndarray:
        """Each image's posterior mass above ``cut``, exactly: at a few votes the Beta is far
        from normal, and a normal tail settled images whose only votes weighed next to nothing."""
        from scipy.special import betaincc

        return betaincc(self.a, self.b, min(max(cut, 0.0), 1.0))


def posterior(votes: Votes, as_cast: bool = False) -> Posterior:
    """Over the evidence weighed by rater reliability, or (``as_cast``) over the votes as cast.
    The prior's mean is the accept share of the image's source (``Votes.sources``), drawn toward
    the project's by SOURCE_PRIOR_WEIGHT votes, so a source with few votes starts at the project's."""
    accepts, rejects = votes.cast if as_cast else (votes.accepts, votes.rejects)
    decisive = accepts.sum() + rejects.sum()
    share = accepts.sum() / decisive if decisive else 0.5
    share = min(max(share, 0.02), 0.98)
    prior = np.full(len(accepts), share)
    if votes.sources is not None and len(accepts):
        names, source = np.unique(votes.sources, return_inverse=True)
        source_accepts = np.bincount(source, weights=accepts, minlength=len(names))
        source_votes = source_accepts + np.bincount(source, weights=rejects, minlength=len(names))
        shares = (source_accepts + share * SOURCE_PRIOR_WEIGHT) / (source_votes + SOURCE_PRIOR_WEIGHT)
        prior = np.clip(shares, 0.02, 0.98)[source]
    return Posterior(prior * PRIOR_WEIGHT + accepts, (1 - prior) * PRIOR_WEIGHT + rejects)


def _cut(mean: np.ndarray, top_k: int) -> float:
    """Halfway between the K-th and the (K+1)-th best posterior means, as LUCB separates them."""
    if len(mean) <= top_k:
        return float(mean.min()) / 2 if len(mean) else 0.5
    kth, next_ = np.partition(mean, [-top_k - 1, -top_k])[[-top_k, -top_k - 1]]
    return float(kth + next_) / 2


def _open(votes: Votes, belief: Posterior, cut: float, movable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's uncertainty (its posterior mass across the cut), and whether it is still
    open. A rated image settles when it is SETTLED-sure of its side, and only while all the
    settled together are expected to hold fewer than SETTLED_TOGETHER on the wrong side, surest
    first: one image at 1% is sure, but four hundred at 1% (each rejected once by a rater who may
    be wrong) hide four good ones. The unrated, all alike, stay open while they lie above the cut
    or together are expected to hold one image above it (fifty thousand at one in fifty hide a
    thousand). Only what votes can still move (``movable``) counts."""
    above = belief.above(cut)
    uncertain = np.minimum(above, 1 - above)
    unrated = votes.decisive == 0
    sure = np.flatnonzero(movable & ~unrated & (uncertain < SETTLED))
    surest_first = sure[np.argsort(uncertain[sure], kind="stable")]
    settled = surest_first[np.cumsum(uncertain[surest_first]) < SETTLED_TOGETHER]
    is_open = movable.copy()
    is_open[settled] = False
    if unrated.any():
        # above the cut (a young project, fewer images than K) every unrated image is worth a look
        hidden = float(above[unrated].sum())
        is_open[unrated] &= (belief.mean[unrated] >= cut) | (hidden >= SETTLED_TOGETHER)
    return uncertain, is_open


@dataclass(frozen=True)
class _Model:
    """What the queue and settledness both rest on."""

    belief: Posterior
    cut: float
    uncertain: np.ndarray
    is_open: np.ndarray
    can_in: np.ndarray
    can_out: np.ndarray


def _model(votes: Votes, policy: SelectionPolicy, team: int | None) -> _Model:
    belief = posterior(votes)
    cut = _cut(belief.mean, policy.top_k)
    can_in, can_out = rule_bounds(votes, policy, team)
    # what the rules settle, in or out, and what every rater has voted on, more votes cannot move
    movable = can_in & can_out & ~votes_complete(votes, team)
    uncertain, is_open = _open(votes, belief, cut, movable)
    return _Model(belief, cut, uncertain, is_open, can_in, can_out)


def rule_bounds(votes: Votes, policy: SelectionPolicy, team: int | None) -> tuple[np.ndarray, np.ndarray]:
    """For each image, whether the votes still to come could put it in the selection, and
    whether they could leave it out, under the selection's own rules (min_votes, a majority of
    accepts, min_score, the per-prompt cap, no near-copy of a better image, the top K).

    Exact bounds, not estimates: an image's best case is every rater of the ``team`` who has not
    voted on it accepting, while every other image gets its worst case (each such rater
    rejecting), and the other way round; in the selection's greedy pass a worse neighbour can
    only help. Without a known team every image could still go either way."""
    n = len(votes.ids)
    if team is None:
        return np.ones(n, dtype=bool), np.ones(n, dtype=bool)
    to_come = np.maximum(team - votes.decisive, 0)  # a vote to come counts in full
    best = (votes.accepts + to_come, votes.rejects)
    worst = (votes.accepts, votes.rejects + to_come)
    counted = votes.decisive + to_come
    # nobody has to vote again: an image short of min_votes may stay short, and out
    short = votes.decisive < policy.min_votes
    can_in = taken(votes, policy, counted, own=best, others=worst, others_out=short)
    return can_in, ~taken(votes, policy, counted, own=worst, others=best) | short


def taken(
    votes: Votes,
    policy: SelectionPolicy,
    counted: np.ndarray,
    own: tuple,
    others: tuple,
    others_out: np.ndarray | None = None,
) -> np.ndarray:
    """Whether the selection takes each image when it has the evidence ``own`` (accepts,
    rejects) and every other image the evidence ``others``, each with ``counted`` votes cast
    (``others_out``: ones left out whatever they count)."""
    o_score, o_eligible = _standing(policy, *others, counted)
    if others_out is not None:
        o_eligible &= ~others_out
    i_score, i_eligible = _standing(policy, *own, counted)
    order = _selection_order(votes, o_score, others[0], o_eligible)
    chosen = _greedy(votes, policy, order)
    result = i_eligible & _fits(votes, policy, chosen, (i_score, own[0]), (o_score, others[0]))
    for i in chosen:  # an image the others' pass took: its place may go to one it kept out
        if i_eligible[i]:
            without = _greedy(votes, policy, order[order != i])
            result[i] = _fits(votes, policy, without, (i_score, own[0]), (o_score, others[0]), only=i)[0]
    return result


def _standing(
    policy: SelectionPolicy, accepts: np.ndarray, rejects: np.ndarray, counted: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's score, and whether the selection may take it (min_votes as ``counted``, a
    majority of accepts, min_score), from its evidence."""
    from herdbook.feedback.scoring import wilson_lower_bounds

    score = wilson_lower_bounds(accepts, accepts + rejects)
    return score, (counted >= policy.min_votes) & (accepts > rejects) & (score >= policy.min_score)


def _selection_order(votes: Votes, score: np.ndarray, accepts: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """The ``eligible`` images in the order the selection considers them: best score, then more
    accepts, then older."""
    order = np.lexsort((votes.ids, -accepts, -score))
    return order[eligible[order]]


def _greedy(votes: Votes, policy: SelectionPolicy, order: np.ndarray) -> np.ndarray:
    """The images select_instance_images takes from eligible ones in ``order``."""
    chosen: list[int] = []
    per_prompt: dict = {}
    for i in order:
        if len(chosen) >= policy.top_k:
            break
        prompt = votes.prompts[i] if votes.prompts is not None else None
        if prompt is not None and per_prompt.get(prompt, 0) >= policy.max_per_prompt:
            continue
        if _near_copies(votes, policy, np.array([i]), np.array(chosen, dtype=int)).any():
            continue
        chosen.append(int(i))
        if prompt is not None:
            per_prompt[prompt] = per_prompt.get(prompt, 0) + 1
    return np.array(chosen, dtype=int)


def _near_copies(votes: Votes, policy: SelectionPolicy, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """[row, column]: whether the two images' perceptual hashes are within the near-copy distance."""
    if votes.hashes is None or not len(columns):
        return np.zeros((len(rows), len(columns)), dtype=bool)
    a, b = votes.hashes[rows][:, None], votes.hashes[columns][None, :]
    close = np.bitwise_count(a ^ b) <= policy.near_duplicate_distance
    return close & (a != 0) & (b != 0)


def _fits(votes, policy, chosen, own, others, only: int | None = None) -> np.ndarray:
    """Whether each image (or just ``only``), placed by its ``own`` (score, accepts), finds a
    place among the ``chosen`` ones ranked above it (by their ``others`` standing): fewer than K,
    fewer than the prompt's cap, and no near-copy."""
    rows = np.arange(len(votes.ids)) if only is None else np.array([only])
    i_score, i_accepts = own[0][rows][:, None], own[1][rows][:, None]
    c_score, c_accepts = others[0][chosen][None, :], others[1][chosen][None, :]
    ahead = (c_score > i_score) | (c_score == i_score) & (
        (c_accepts > i_accepts) | (c_accepts == i_accepts) & (votes.ids[chosen][None, :] < votes.ids[rows][:, None])
    )
    ahead &= chosen[None, :] != rows[:, None]
    fits = ahead.sum(axis=1) < policy.top_k
    if votes.prompts is not None:
        same_prompt = votes.prompts[chosen][None, :] == votes.prompts[rows][:, None]
        fits &= (ahead & same_prompt).sum(axis=1) < policy.max_per_prompt
    return fits & ~(ahead & _near_copies(votes, policy, rows, chosen)).any(axis=1)


def votes_complete(votes: Votes, team: int | None) -> np.ndarray:
    """Rated images every rater of the ``team`` has voted on: no vote can move them any more."""
    if team is None:
        return np.zeros(len(votes.ids), dtype=bool)
    decisive = votes.decisive
    return (decisive > 0) & (decisive >= team)


def rank(votes: Votes, policy: SelectionPolicy, team: int | None = None) -> Ranking:
    """The open images in the order their next vote is most useful: first those in the top K
    (by posterior mean) with votes but short of ``min_votes``, and those a full selection took on
    one accept (lone_accepts), then the most uncertain; fewer votes, then older, break ties.
    Settled images are left out, and so are images the rules exclude whatever the rest of the
    ``team`` (the raters there are) votes."""
    model = _model(votes, policy, team)
    mean, cut, uncertain = model.belief.mean, model.cut, model.uncertain
    decisive = votes.decisive
    short = (mean >= cut) & (decisive > 0) & (decisive < policy.min_votes) & model.can_in & model.can_out
    lone = lone_accepts(votes, policy, team) & model.is_open
    first = short | lone
    candidates = np.flatnonzero(model.is_open | short)
    # np.lexsort sorts by its last key first
    keys = (votes.ids[candidates], decisive[candidates], -uncertain[candidates], ~first[candidates])
    order = candidates[np.lexsort(keys)]
    return Ranking(votes, order, uncertain, mean, cut, short, policy.top_k, policy.min_votes, lone)


def lone_accepts(votes: Votes, policy: SelectionPolicy, team: int | None) -> np.ndarray:
    """The selected images that only one vote put there, once the selection is full and a team
    can give second opinions. Then a new image's lone accept can at best tie with them, while a
    second vote on one either confirms it or takes it out (a majority of accepts) and lets the
    next one in: on the 72-image simulated project, asking these first took the votes to a
    95%-precise top 24 from 2.1x fewer than arrival order to 2.8x (bench/queue_scenarios.txt)."""
    lone = np.zeros(len(votes.ids), dtype=bool)
    if team is None or team < 2:
        return lone
    chosen = _selected(votes, policy)
    if len(chosen) >= policy.top_k:
        lone[chosen] = votes.decisive[chosen] == 1
    return lone


def spread_indices(order: np.ndarray, slot: int, raters: int, turn: np.ndarray | None = None) -> np.ndarray:
    """This rater's view of a shared order: the images whose next vote is their turn first, then
    the rest, so active raters start on different images and none is left unseen. ``turn`` (an
    integer per image, taken modulo ``raters``) says whose turn; without it, every
    ``raters``-th entry from ``slot``. By position alone, raters who load their pages a few votes
    apart overlap, as every vote shifts the order."""
    if raters <= 1:
        return order
    key = np.arange(len(order)) if turn is None else turn[order]
    mine = key % raters == slot % raters
    return np.concatenate([order[mine], order[~mine]])


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
    # an image's next vote is the turn of the rater after the one before: its id plus its votes cast
    turn = ranking.votes.ids + ranking.votes.decisive.astype(np.int64)
    mine = spread_indices(ranking.order, slot, raters, turn)
    mine = mine[allowed[mine]]
    return [ranking.entry(int(i)) for i in mine[:limit]], len(mine)


def current_selection(images: Sequence[ImageVotes] | Votes, policy: SelectionPolicy) -> set[int]:
    """The ids select_instance_images takes, from the same counts (and weighed evidence) the queue has."""
    votes = images if isinstance(images, Votes) else Votes.of(images)
    return {int(i) for i in votes.ids[_selected(votes, policy)]}


def _selected(votes: Votes, policy: SelectionPolicy) -> np.ndarray:
    """The indices select_instance_images takes, computed over the arrays: 0.1 s where building
    its RatedImage list took 0.6 s on 50,000 images, and what a simulation can run many times.
    (Ties go to more accepts as cast, as select_instance_images breaks them.)"""
    score, eligible = _standing(policy, votes.accepts, votes.rejects, votes.decisive)
    return _greedy(votes, policy, _selection_order(votes, score, votes.cast[0], eligible))


def _expected_to_stay(
    votes: Votes, policy: SelectionPolicy, model: _Model, team: int | None, chosen: np.ndarray
) -> float:
    """The share of the selection that it keeps once every vote still to come is cast, by
    simulation: each open image's missing votes drawn from its posterior, the selection's own
    pass run on each draw. (A posterior mass above the cut said 92% where 10% stayed: it knew
    nothing of ties at the top, the rules or the images still unrated.)"""
    if not chosen.any():
        return 0.0
    # without a known team, one more vote on each open image
    to_come = np.ones(len(votes.ids), dtype=int) if team is None else np.maximum(team - votes.decisive, 0).astype(int)
    # an image the rules keep out whatever its votes takes no place, no prompt's slot, blocks no
    # near-copy: its votes cannot change the selection, so only those that could get in move
    to_come = to_come * (model.is_open & model.can_in)
    moving = np.flatnonzero(to_come > 0)
    if not len(moving):
        return 1.0
    accepts_cast, rejects_cast = votes.cast
    cast = accepts_cast.sum() + rejects_cast.sum()
    weight = (votes.accepts.sum() + votes.rejects.sum()) / cast if cast else 1.0  # a vote to come weighs the average
    rng = np.random.default_rng(0)  # the same votes always show the same figure
    to_draw = _VotesToCome(model.belief.a[moving], model.belief.b[moving], to_come[moving], weight, model.cut)
    kept = []
    for _ in range(STAY_DRAWS):
        accepts, rejects = to_draw.draw(rng)
        outcome = _with_votes(votes, moving, accepts, rejects, weight)
        kept.append(np.isin(np.flatnonzero(chosen), _selected(outcome, policy)).mean())
    return float(np.mean(kept))


class _VotesToCome:
    """The votes still to come on images with posteriors Beta(a, b), up to ``n`` each, drawn as
    the queue asks for them: one at a time, until the image is SETTLED-sure of its side of the
    cut. (Every vote to come at once read 10-17 points low where most images settle after one more.)"""

    REMEMBERED_VOTES = 16  # whether an image is sure is kept for the first this many votes (~8 MB at 50,000 images)

    def __init__(self, a: np.ndarray, b: np.ndarray, n: np.ndarray, weight: float, cut: float) -> None:
        self.a, self.b, self.n, self.weight, self.cut = a, b, n, weight, cut
        # an image that every vote to come accepted (or rejected) would still leave unsure never
        # settles on the way, as each vote moves its tail one way by less: all its votes come
        self.settles = self._sure(np.arange(len(a)), n, 0) | self._sure(np.arange(len(a)), 0, n)
        # m -> [k, i]: whether image i is sure after m more votes, k of them accepts (-1: not yet
        # known). The exact tail is the cost: each image at each count once, for all the draws
        self.known: dict[int, np.ndarray] = {}

    def _sure(self, rows: np.ndarray, k: np.ndarray | int, j: np.ndarray | int) -> np.ndarray:
        pairs = np.stack(np.broadcast_arrays(self.a[rows] + self.weight * k, self.b[rows] + self.weight * j), axis=1)
        distinct, which = np.unique(pairs, axis=0, return_inverse=True)  # the unrated share theirs
        above = Posterior(distinct[:, 0], distinct[:, 1]).above(self.cut)[which.ravel()]
        return np.minimum(above, 1 - above) < SETTLED

    def _settled(self, m: int, k: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if m > self.REMEMBERED_VOTES:
            return self._sure(rows, k, m - k)
        table = self.known.get(m)
        if table is None:  # (setdefault would build a new table on every call)
            table = self.known[m] = np.full((m + 1, len(self.a)), -1, dtype=np.int8)
        unknown = table[k, rows] < 0
        if unknown.any():
            table[k[unknown], rows[unknown]] = self._sure(rows[unknown], k[unknown], m - k[unknown])
        return table[k, rows] == 1

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One future: each image's accept rate drawn from its posterior, then its votes."""
        rate = rng.beta(self.a, self.b)
        accepts = rng.binomial(self.n, rate) * ~self.settles
        rejects = (self.n - accepts) * ~self.settles
        moving = np.flatnonzero(self.settles & (self.n > 0))
        cast = 0  # votes each moving image has had so far
        while len(moving):
            accepted = rng.random(len(moving)) < rate[moving]
            accepts[moving] += accepted
            rejects[moving] += ~accepted
            cast += 1
            moving = moving[cast < self.n[moving]]
            moving = moving[~self._settled(cast, accepts[moving], moving)]
        return accepts, rejects


def _with_votes(votes: Votes, rows: np.ndarray, accepts: np.ndarray, rejects: np.ndarray, weight: float) -> Votes:
    """``votes`` with more accepts and rejects cast on ``rows``, each weighing ``weight``."""

    def plus(counts: np.ndarray, added: np.ndarray) -> np.ndarray:
        counts = counts.astype(float)
        counts[rows] += added
        return counts

    accepts_cast, rejects_cast = votes.cast
    return Votes(
        votes.ids,
        plus(votes.accepts, weight * accepts),
        plus(votes.rejects, weight * rejects),
        votes.prompts,
        votes.hashes,
        plus(accepts_cast, accepts),
        plus(rejects_cast, rejects),
        votes.sources,
    )


def settledness(images: Sequence[ImageVotes] | Votes, policy: SelectionPolicy, team: int | None = None) -> Settledness:
    """How firm the current selection is, by the queue's own model: an image is open while the
    rules let more votes move it (rule_bounds) and its posterior straddles the cut."""
    votes = images if isinstance(images, Votes) else Votes.of(images)
    if not len(votes.ids):
        return Settledness(0, 0.0, 0, 0, 0)
    selected = current_selection(votes, policy)
    model = _model(votes, policy, team)
    belief, cut, open_ = model.belief, model.cut, model.is_open
    voted = votes.decisive > 0
    chosen = np.isin(votes.ids, list(selected))
    unrated_open = open_ & ~voted
    hidden = float(belief.above(cut)[unrated_open].sum())
    # whether most raters would accept each one: their votes as cast, each rater counted once.
    # Over the weighed evidence it read 0.61 where 0.80 of the selected were good, and 0.74 where
    # 0.91 were: weights below 1 shrank unanimous votes (bench/queue_scenarios.txt)
    good = posterior(votes, as_cast=True).above(0.5)[chosen]
    return Settledness(
        selected=int(chosen.sum()),
        expected_survivors=_expected_to_stay(votes, policy, model, team, chosen),
        undecided=int((open_ & voted).sum()),
        unrated_open=int(unrated_open.sum()),
        settled=int((~open_ & voted).sum()),
        could_drop=int((chosen & open_).sum()),
        unrated_better=round(hidden, 1),
        expected_precision=float(good.mean()) if chosen.any() else 0.0,
        wanted=policy.top_k,
    )
