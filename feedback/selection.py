"""Choosing the instance images for the next round. Plain functions over plain data."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from herdbook.db.errors import StrictSettings
from herdbook.feedback.images import hash_distance
from herdbook.feedback.scoring import Tally, score, verdict
from pydantic import Field, NonNegativeInt


class SelectionPolicy(StrictSettings):
    """Which rated images become instance data (``[selection]`` in herdbook.toml). The defaults
    suit a lone curator (their one accept selects an image) and a team (an image most of its
    raters rejected never is)."""

    min_votes: NonNegativeInt = 1  # accept/reject votes an image needs before it can be chosen
    min_score: float = Field(0.0, ge=0, le=1)  # Wilson lower bound of the accept rate; 1 accept = 0.21
    top_k: int = Field(24, ge=1)  # Dreambooth wants a handful to a few dozen consistent images
    max_per_prompt: int = Field(8, ge=1)  # keeps one prompt from filling the set
    near_duplicate_distance: int = Field(6, ge=0, le=64)  # perceptual-hash bits; re-encodes differ by 0-4
    # each rater's votes weigh by how reliable they are (feedback.reliability): one who accepts
    # everything ends up weighing little. False: one vote each, the plain view
    weigh_raters: bool = True


@dataclass(frozen=True)
class RatedImage:
    id: int
    prompt: str
    tally: Tally
    phash: str | None = None
    source_name: str = ""


@dataclass(frozen=True)
class Decision:
    image: RatedImage
    selected: bool
    reason: str
    score: float


def _ranked(images: Iterable[RatedImage]) -> list[tuple[float, RatedImage]]:
    scored = [(score(image.tally), image) for image in images]
    # best score first; more accepts break ties; older images (lower id) break the rest
    return sorted(scored, key=lambda pair: (-pair[0], -pair[1].tally.accepts, pair[1].id))


def select_instance_images(images: Iterable[RatedImage], policy: SelectionPolicy | None = None) -> list[Decision]:
    """Every image with a decision and a reason, best first."""
    policy = policy or SelectionPolicy()
    decisions: list[Decision] = []
    chosen: list[RatedImage] = []
    per_prompt: Counter[str] = Counter()
    for image_score, image in _ranked(images):
        t = image.tally
        counts = f"{t.accepts} accept, {t.rejects} reject"

        def out(reason: str, image=image, image_score=image_score) -> None:
            decisions.append(Decision(image, False, reason, image_score))

        if t.decisive < policy.min_votes:
            out(f"only {t.decisive} accept/reject vote(s); needs {policy.min_votes}")
            continue
        outcome = verdict(t)
        if outcome != "accepted":
            out(f"{'most raters rejected it' if outcome == 'rejected' else 'votes are tied'} ({counts})")
            continue
        if image_score < policy.min_score:
            out(f"score {image_score:.2f} is under the minimum {policy.min_score:.2f} ({counts})")
            continue
        twin = next(
            (
                other
                for other in chosen
                if image.phash
                and other.phash
                and hash_distance(image.phash, other.phash) <= policy.near_duplicate_distance
            ),
            None,
        )
        if twin is not None:
            out(f"near-copy of #{twin.id} {twin.source_name}, which scored as high or higher")
            continue
        if per_prompt[image.prompt] >= policy.max_per_prompt:
            out(f"its prompt already has {policy.max_per_prompt} images selected")
            continue
        if len(chosen) >= policy.top_k:
            out(f"the top {policy.top_k} are already chosen (score {image_score:.2f}, {counts})")
            continue
        chosen.append(image)
        per_prompt[image.prompt] += 1
        decisions.append(Decision(image, True, f"rank {len(chosen)}: score {image_score:.2f} ({counts})", image_score))
    return decisions


def weighing_text(policy: SelectionPolicy) -> str:
    """Which view of the votes is in force, and the setting that gives the other."""
    if policy.weigh_raters:
        return (
            "Votes weigh by each rater's reliability: scores, the selection and the queue use the weighed "
            "evidence, the estimated precision the votes as cast ([selection] weigh_raters = false counts one "
            "vote each)."
        )
    return "One vote each: raters are not weighed ([selection] weigh_raters = true weighs them by reliability)."


def selected(decisions: Iterable[Decision]) -> list[Decision]:
    return [d for d in decisions if d.selected]
