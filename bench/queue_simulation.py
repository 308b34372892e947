"""How many votes each rating-queue policy needs before the selected top K is right.

A simulated project: candidates that are truly good or not, a share of them borderline, and
raters who agree with the truth with their own accuracy (0.8-0.9 on clear images, 0.6 on
borderline ones), each voting at most once per image. Raters take their next images through
the queue functions the app uses (``uncertainty_order`` and ``spread`` for the default policy,
oldest first, newest first), a batch at a time as the Rate page loads them, and the selection
is herdbook's own (``select_instance_images`` with the default policy, K = 24).

The truth is resolvable: there are more clear good images than K, and a clear image's votes
(6 raters at 0.8-0.9) reveal it, so a policy that puts the votes in the right places can
reach 95% precision.

    python bench/queue_simulation.py [--candidates 5000] [--good 40] [--raters 6] [--seeds 5]

Prints a table per policy and ends with the line the README quotes;
bench/queue_simulation.txt holds the output of the run reported in the notes.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

from herdbook.feedback.queueing import ImageVotes, spread, uncertainty_order
from herdbook.feedback.scoring import Tally
from herdbook.feedback.selection import RatedImage, SelectionPolicy, select_instance_images

POLICY = SelectionPolicy()  # the project default: K = 24, min_votes 1, majority, max 8 per prompt
BATCH = 10  # images a rater's page holds before it asks the queue again


@dataclass
class Project:
    good: list[bool]
    borderline: list[bool]
    prompts: list[str]
    accuracy: list[float]  # each rater's accuracy on clear images


def make_project(rng: random.Random, candidates: int, good: int, raters: int, borderline_share: float) -> Project:
    is_good = [False] * candidates
    for index in rng.sample(range(candidates), good):
        is_good[index] = True
    # a quarter of the good images are borderline, as is borderline_share of the rest
    borderline = [rng.random() < (0.25 if g else borderline_share) for g in is_good]
    prompts = [f"prompt {i // 4}" for i in range(candidates)]  # four candidates per prompt, as generated
    return Project(is_good, borderline, prompts, [rng.uniform(0.8, 0.9) for _ in range(raters)])


def cast(project: Project, rng: random.Random, rater: int, image: int) -> bool:
    accuracy = 0.6 if project.borderline[image] else project.accuracy[rater]
    right = rng.random() < accuracy
    return project.good[image] if right else not project.good[image]


def precision(project: Project, accepts: list[int], rejects: list[int]) -> float:
    rated = [
        RatedImage(i, project.prompts[i], Tally(accepts[i], rejects[i]))
        for i in range(len(accepts))
        if accepts[i] + rejects[i]
    ]
    chosen = [d.image.id for d in select_instance_images(rated, POLICY) if d.selected]
    if len(chosen) < POLICY.top_k:
        return sum(project.good[i] for i in chosen) / POLICY.top_k  # an unfilled set counts its gaps as misses
    return sum(project.good[i] for i in chosen) / len(chosen)


def next_batch(policy: str, project: Project, accepts, rejects, voted: list[set[int]], rater: int, raters: int):
    n = len(accepts)
    if policy == "arrival order":
        return [i for i in range(n) if i not in voted[rater]][:BATCH]
    if policy == "newest first":
        return [i for i in range(n - 1, -1, -1) if i not in voted[rater]][:BATCH]
    images = [ImageVotes(i, accepts[i], rejects[i], None, project.prompts[i]) for i in range(n)]
    order = [e for e in uncertainty_order(images, POLICY) if e.id not in voted[rater]]
    return [e.id for e in spread(order, rater, raters)[:BATCH]]


def simulate(policy: str, project: Project, seed: int, budget: int, checkpoints: tuple[int, ...]) -> dict:
    rng = random.Random(seed * 7919 + 1)
    n, raters = len(project.good), len(project.accuracy)
    accepts, rejects = [0] * n, [0] * n
    voted: list[set[int]] = [set() for _ in range(raters)]
    pages: list[list[int]] = [[] for _ in range(raters)]
    result = {"votes_to_95": None, **{f"precision_at_{c}": None for c in checkpoints}}
    votes = 0
    while votes < budget:
        rater = votes % raters  # raters take turns, one vote at a time
        if not pages[rater]:
            pages[rater] = next_batch(policy, project, accepts, rejects, voted, rater, raters)
            if not pages[rater]:
                if all(not next_batch(policy, project, accepts, rejects, voted, r, raters) for r in range(raters)):
                    break  # every rater has nothing left
                votes += 1  # this rater idles for a turn
                continue
        image = pages[rater].pop(0)
        if image in voted[rater]:
            continue
        voted[rater].add(image)
        if cast(project, rng, rater, image):
            accepts[image] += 1
        else:
            rejects[image] += 1
        votes += 1
        if votes in checkpoints:
            result[f"precision_at_{votes}"] = precision(project, accepts, rejects)
        if result["votes_to_95"] is None and votes % 25 == 0 and precision(project, accepts, rejects) >= 0.95:
            result["votes_to_95"] = votes
            if all(result[f"precision_at_{c}"] is not None or c < votes for c in checkpoints) and votes > max(
                checkpoints
            ):
                break
    for c in checkpoints:
        if result[f"precision_at_{c}"] is None:
            result[f"precision_at_{c}"] = precision(project, accepts, rejects)
    return result


def run(candidates: int, good: int, raters: int, seeds: int, budget: int, checkpoints: tuple[int, ...]) -> dict:
    policies = ("arrival order", "newest first", "uncertainty queue")
    table = {p: [] for p in policies}
    for seed in range(seeds):
        project = make_project(random.Random(seed), candidates, good, raters, borderline_share=0.01)
        for policy in policies:
            table[policy].append(simulate(policy, project, seed, budget, checkpoints))
    return table


def mean(values: list) -> float:
    return sum(values) / len(values)


def mean_votes(values: list[int | None], budget: int) -> tuple[float, bool]:
    """The mean, counting a run that never got there as the whole budget: then a lower bound."""
    return mean([budget if v is None else v for v in values]), any(v is None for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=5000)
    parser.add_argument("--good", type=int, default=60)
    parser.add_argument("--raters", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=40_000, help="Votes at most (8 raters x 5,000 images).")
    args = parser.parse_args()
    checkpoints = (1000, 3000)
    print(
        f"{args.candidates} candidates ({args.good} truly good, 25% of them and 1% of the rest borderline), "
        f"{args.raters} raters (accuracy 0.8-0.9 clear, 0.6 borderline), K = {POLICY.top_k}, {args.seeds} seeds"
    )
    table = run(args.candidates, args.good, args.raters, args.seeds, args.budget, checkpoints)
    print(f"{'policy':<18} {'votes to 95% precision':>24} {'precision @1000':>16} {'precision @3000':>16}")
    summary = {}
    for policy, runs in table.items():
        to_95, lower_bound = mean_votes([r["votes_to_95"] for r in runs], args.budget)
        summary[policy] = (to_95, lower_bound)
        per_seed = ", ".join(f"{r['votes_to_95']:,}" if r["votes_to_95"] else "not reached" for r in runs)
        shown = f"{'>= ' if lower_bound else ''}{to_95:,.0f}"
        print(
            f"{policy:<18} {shown:>24} {mean([r['precision_at_1000'] for r in runs]):>16.2f} "
            f"{mean([r['precision_at_3000'] for r in runs]):>16.2f}   (per seed: {per_seed})"
        )
    (base, base_bound), (ours, ours_bound) = summary["arrival order"], summary["uncertainty queue"]
    if base_bound or ours_bound:
        print(f"(a run that never reached 95% counts as the whole budget of {args.budget:,} votes: a lower bound)")
    print(f"uncertainty queue: {base / ours:.1f}x fewer votes than arrival order to reach 95% precision")


if __name__ == "__main__":
    main()
