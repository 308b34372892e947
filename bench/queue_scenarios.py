"""Does the rating queue hold on teams it was not tuned on? Votes to a 90%- and 95%-precise top K,
for the uncertainty queue against arrival order and a uniformly random order, per scenario and seed,
and how well the figures the app shows predict what they claim: the selection's estimated precision
against the share of the selected that are truly good, and the share "expected to stay" against the
share of the selection that the run's last selection keeps among the images there were then (the
figure speaks of the votes still to come, not of candidates not generated yet).

Each scenario is a project with a latent quality per image (continuous, normal), candidates
arriving in waves whose quality rises per wave, and raters with their own leniency and noise:
a rater accepts an image when its quality plus their noise clears the bar shifted by their
leniency. Some scenarios add a spammer (accepts 95% of everything) and a tiring rater (noise
grows with each vote). The truly good images are the 2K best (so a precise top K exists).
Each rater's noise on each image is drawn once per seed, so every order is asked the same votes
and they differ only in which they ask for (the tiring rater's grows with their votes, so theirs
differ a little by order).

Two measures per run: the votes at which the selection first is 95% precise, and the votes from
which it stays so to the end of the run (the queue empty, or every vote cast): a team stops when
the app says so, not when the truth it cannot see crosses the line for a moment. The ratios
count the seeds where the selection is 95% precise once every rater has voted on every image
(where any order can get there).

The queue is herdbook's own code, as ``queue_view`` runs it: the votes weighed by each rater's
reliability (``feedback.reliability``, as ``[selection] weigh_raters`` does by default), ranked by
``rank`` with the team, a rater's page from ``next_for`` (raters spread apart). The selection is
``select_instance_images`` over the same tallies, as ``herdbook select`` makes it, and the figures
checked are ``settledness(...)``'s, as the Dataset page and ``status`` show them.
No database: the same functions over arrays, so 75 runs fit in about five minutes on one core.

    python -m bench.queue_scenarios [--seeds 5] [--only NAME]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
from dataclasses import dataclass

import numpy as np
from herdbook.feedback.queueing import Votes, next_for, rank, settledness
from herdbook.feedback.reliability import reliability
from herdbook.feedback.scoring import Tally
from herdbook.feedback.selection import RatedImage, SelectionPolicy, select_instance_images

PAGE = 10  # cards an arrival or random page holds
CALIBRATE_EVERY = 4  # precision checks between settledness readings


@dataclass(frozen=True)
class Scenario:
    name: str
    candidates: int
    waves: int
    top_k: int
    raters: int
    spammer: bool = True
    tiring: bool = True
    # votes a rater casts before the Rate page reads the queue again: as often as a read costs each
    # vote 5 ms (votes_between_reads; bench/rate_latency.txt, 2-core machine: about every 4th vote
    # at 1,200 images, every vote at 200)
    reads_every: int = 4
    check_every: int = 25  # votes between precision checks


SCENARIOS = [
    Scenario("waves of 400, 8 raters, K=24", 1200, 3, 24, 8),
    Scenario("one wave of 1200, 8 raters, K=24", 1200, 1, 24, 8),
    Scenario("waves of 200, 6 raters, K=8", 600, 3, 8, 6, reads_every=2),
    Scenario("honest team, waves of 400, K=24", 1200, 3, 24, 8, spammer=False, tiring=False),
    Scenario("small project: 72 images, K=24", 72, 1, 24, 4, spammer=False, reads_every=1, check_every=3),
]
ORDERS = ("uncertainty", "arrival", "random")


@dataclass
class Team:
    quality: np.ndarray
    good: np.ndarray  # bool: among the 2K best
    bar: float
    wave: np.ndarray  # which wave each image arrives in
    leniency: np.ndarray
    noise: np.ndarray
    spammer: int | None
    tiring: int | None
    # each rater's draw on each image, fixed per seed, so every order is asked the same votes
    # (common random numbers: orders differ by which votes they ask for, not by luck)
    draws: np.ndarray


def make_team(scenario: Scenario, seed: int) -> Team:
    rng = np.random.default_rng(seed)
    n = scenario.candidates
    wave = np.repeat(np.arange(scenario.waves), -(-n // scenario.waves))[:n]
    quality = rng.normal(0.5 * wave, 1.0)  # each wave better than the last
    bar = float(np.sort(quality)[-2 * scenario.top_k])
    raters = scenario.raters
    return Team(
        quality,
        quality >= bar,
        bar,
        wave,
        rng.uniform(-0.4, 0.4, raters),
        rng.uniform(0.3, 0.8, raters),
        raters - 1 if scenario.spammer else None,
        raters - 2 if scenario.tiring else None,
        rng.standard_normal((raters, n)),
    )


def accepts(team: Team, rater: int, image: int, cast_so_far: int) -> bool:
    draw = team.draws[rater, image]
    if rater == team.spammer:
        return bool(draw < 1.645)  # 95% of standard normal draws
    noise = team.noise[rater] * (1 + cast_so_far / 300 if rater == team.tiring else 1)
    return bool(team.quality[image] + noise * draw > team.bar + team.leniency[rater])


class Tallies:
    """The project's votes as the queue and the selection read them."""

    def __init__(self, n: int, sources: np.ndarray | None = None) -> None:
        self.sources = sources  # the wave (generation round) each image came from
        self.cast: list[tuple[int, str, bool]] = []
        self.accepts = np.zeros(n)
        self.rejects = np.zeros(n)

    def add(self, image: int, rater: int, accepted: bool) -> None:
        self.cast.append((image, f"r{rater}", accepted))
        (self.accepts if accepted else self.rejects)[image] += 1

    def votes(self, ids: np.ndarray) -> Votes:
        """Weighed by reliability, as vote_counts(session, weigh=True) gives them."""
        weights = {name: r.weight for name, r in reliability(self.cast)[0].items()}
        evidence = np.zeros(len(ids)), np.zeros(len(ids))
        for image, rater, accepted in self.cast:
            evidence[0 if accepted else 1][image] += weights[rater]
        prompts = np.array([f"prompt {i // 4}" for i in ids], dtype=object)  # four per prompt, as generated
        return Votes(ids, *evidence, prompts, None, self.accepts.copy(), self.rejects.copy(), self.sources)


def selection(votes: Votes, policy: SelectionPolicy) -> list[int]:
    """What ``herdbook select`` takes from these votes."""
    rated = [
        RatedImage(
            int(i),
            votes.prompts[i],
            Tally(int(votes.accepts_cast[i]), int(votes.rejects_cast[i]), weighed=(votes.accepts[i], votes.rejects[i])),
        )
        for i in np.flatnonzero(votes.decisive > 0)
    ]
    return [d.image.id for d in select_instance_images(rated, policy) if d.selected]


def precision(chosen: list[int], policy: SelectionPolicy, good: np.ndarray) -> float:
    return float(sum(good[i] for i in chosen)) / policy.top_k  # an unfilled set counts its gaps as misses


def run(scenario: Scenario, order: str, seed: int) -> dict:
    team = make_team(scenario, seed)
    rng = np.random.default_rng(seed * 7919 + ORDERS.index(order))
    n, raters = scenario.candidates, scenario.raters
    policy = SelectionPolicy(top_k=scenario.top_k)
    ids = np.arange(n)
    tallies = Tallies(n, team.wave)
    voted = np.zeros((raters, n), dtype=bool)
    cast_by = np.zeros(raters, dtype=int)
    shuffled = [rng.permutation(n) for _ in range(raters)]
    pages: list[list[int]] = [[] for _ in range(raters)]
    wave_gap = 2 * -(-n // scenario.waves)  # a wave arrives after two votes an image of the one before
    result = {"votes": 0, "readings": []}
    trace: list[tuple[int, float]] = []  # (votes cast, the selection's precision) at each check
    idle, waves_in = 0, 0
    budget = raters * n
    while result["votes"] < budget:
        cast = result["votes"]
        rater = (cast + idle) % raters
        waves_in = max(waves_in, cast // wave_gap)
        arrived = team.wave <= waves_in
        if idle >= raters:  # nobody has anything left: the next wave comes now, or the run ends
            if arrived.all():
                break
            waves_in, idle = waves_in + 1, 0
            continue
        if not pages[rater]:
            allowed = arrived & ~voted[rater]
            if order == "uncertainty":
                ranking = rank(tallies.votes(ids), policy, team=raters)
                pages[rater] = [e.id for e in next_for(ranking, allowed, rater, raters, scenario.reads_every)[0]]
            elif order == "arrival":
                pages[rater] = [int(i) for i in np.flatnonzero(allowed)[:PAGE]]
            else:
                mine = shuffled[rater]
                pages[rater] = [int(i) for i in mine[allowed[mine]][:PAGE]]
            if not pages[rater]:
                idle += 1  # nothing this rater could vote on now; the next rater's turn
                continue
        idle = 0
        image = pages[rater].pop(0)
        if voted[rater, image]:
            continue
        voted[rater, image] = True
        tallies.add(image, rater, accepts(team, rater, image, cast_by[rater]))
        cast_by[rater] += 1
        result["votes"] += 1
        votes_now = result["votes"]
        if votes_now % scenario.check_every == 0:
            votes = tallies.votes(ids)
            chosen = selection(votes, policy)
            trace.append((votes_now, precision(chosen, policy, team.good)))
            if order == "uncertainty" and votes_now % (CALIBRATE_EVERY * scenario.check_every) == 0:
                firm = settledness(votes, policy, team=raters)
                good_share = float(np.mean(team.good[chosen])) if chosen else 0.0
                result["readings"].append(
                    (firm.expected_precision, firm.expected_survivors, good_share, chosen, arrived.copy())
                )
    final_votes = tallies.votes(ids)
    trace.append((result["votes"], precision(selection(final_votes, policy), policy, team.good)))
    for target, key in ((0.9, "to_90"), (0.95, "to_95")):
        result[key] = next((cast for cast, reached in trace if reached >= target), None)
    # a team stops when the app says so, not when the truth it cannot see crosses the line: the
    # votes after which the precision stayed at 95% or more to the end of the run (the queue empty,
    # or every rater's vote on every image cast)
    result["stays_95"] = None
    for cast, reached in trace:
        if reached < 0.95:
            result["stays_95"] = None
        elif result["stays_95"] is None:
            result["stays_95"] = cast
    # "expected to stay" speaks of the votes still to come on the images there are, so each reading
    # is checked against the last selection among the images that had arrived when it was shown
    result["readings"] = [
        (shown, stays, good_share, kept_share(chosen, final_votes, there, policy))
        for shown, stays, good_share, chosen, there in result["readings"]
    ]
    return result


def kept_share(chosen: list[int], votes: Votes, there: np.ndarray, policy: SelectionPolicy) -> float:
    """The share of ``chosen`` that the selection keeps from the final ``votes`` on the images ``there``."""
    if not chosen:
        return 1.0
    columns = ("accepts", "rejects", "accepts_cast", "rejects_cast")
    only = dataclasses.replace(votes, **{name: getattr(votes, name) * there for name in columns})
    final = set(selection(only, policy))
    return sum(i in final for i in chosen) / len(chosen)


def ceiling(scenario: Scenario, seed: int) -> float:
    """The precision of the selection once every rater has voted on every image: what no order
    can beat at the end, though one may pass it for a moment on the way."""
    team = make_team(scenario, seed)
    tallies = Tallies(scenario.candidates)
    for image in range(scenario.candidates):
        for rater in range(scenario.raters):
            tallies.add(image, rater, accepts(team, rater, image, image))
    policy = SelectionPolicy(top_k=scenario.top_k)
    return precision(selection(tallies.votes(np.arange(scenario.candidates)), policy), policy, team.good)


def blind_floor(scenario: Scenario, seed: int, orders: int = 400) -> float:
    """Fewer votes than any order that cannot see an image before its votes could need, on
    average: the votes until ceil(0.95 K) truly good images have each had a first vote that
    accepts it. Such an order can tell apart only the waves; it gets each wave when the runs do
    (after two votes an image of the wave before) and votes the newest arrived first, every first
    vote is granted the rater who would accept, and every image it accepted wrongly costs nothing
    to put out. Votes cast while every arrived image has had its first are spent waiting for the
    next wave. A selection needs an accept on each image it takes (min_votes 1 and a majority),
    so no order reaches 95% sooner, whatever it does after."""
    team = make_team(scenario, seed)
    n, need = scenario.candidates, math.ceil(0.95 * scenario.top_k)
    found = team.good & np.array([any(accepts(team, r, i, 0) for r in range(scenario.raters)) for i in range(n)])
    if found.sum() < need:
        return math.inf
    wave_gap = 2 * -(-n // scenario.waves)  # as in run()
    rng = np.random.default_rng(seed)
    votes = []
    for _ in range(orders):
        waiting = [list(rng.permutation(np.flatnonzero(team.wave == w))) for w in range(scenario.waves)]
        cast = hits = 0
        while hits < need:
            arrived = min(cast // wave_gap, scenario.waves - 1)
            newest = next((w for w in range(arrived, -1, -1) if waiting[w]), None)
            cast += 1
            if newest is not None:
                hits += bool(found[waiting[newest].pop()])
        votes.append(cast)
    return statistics.mean(votes)


def ratio(runs: dict, other: str, key: str, budget: int, possible: list[bool]) -> float | None:
    """The median over the ``possible`` seeds of the other order's votes over ours, where the
    other order got there at all; a seed where ours never did counts as the whole budget."""
    pairs = [
        (theirs[key], budget if ours[key] is None else ours[key])
        for theirs, ours, can in zip(runs[other], runs["uncertainty"], possible, strict=True)
        if theirs[key] and can
    ]
    return statistics.median(o / u for o, u in pairs) if pairs else None


def describe(value: int | None) -> str:
    return f"{value:,}" if value is not None else "never"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", help="run the scenarios whose name holds this")
    args = parser.parse_args()
    readings: list[tuple[float, float, float, float, bool]] = []  # shown, stays, good share, kept, one wave
    verdicts = []
    for scenario in SCENARIOS:
        if args.only and args.only not in scenario.name:
            continue
        print(f"\n## {scenario.name}: {scenario.candidates} candidates in {scenario.waves} wave(s), "
              f"{scenario.raters} raters{', a spammer' if scenario.spammer else ''}"
              f"{', a tiring rater' if scenario.tiring else ''}")  # fmt: skip
        print(f"{'order':<12} {'votes to 90% (per seed)':<36} {'votes to 95%':<36} {'95% from then on':<36}")
        runs = {order: [run(scenario, order, seed) for seed in range(args.seeds)] for order in ORDERS}
        for r in runs["uncertainty"]:
            readings += [(*reading, scenario.waves == 1) for reading in r["readings"]]
        for order in ORDERS:
            columns = (", ".join(describe(r[key]) for r in runs[order]) for key in ("to_90", "to_95", "stays_95"))
            print(f"{order:<12} " + " ".join(f"{c:<36}" for c in columns), flush=True)
        ceilings = [ceiling(scenario, seed) for seed in range(args.seeds)]
        print(f"precision once every rater voted on every image, per seed: {', '.join(f'{c:.0%}' for c in ceilings)}"
              " (the ratios below count the seeds where it is 95% or more: where any order can get there)")  # fmt: skip
        budget = scenario.raters * scenario.candidates
        possible = [c >= 0.95 for c in ceilings]
        floors = [blind_floor(scenario, seed) for seed in range(args.seeds)]
        best = {}  # per order, the median over the possible seeds of its votes over the floor
        for other in ORDERS:
            ratios = [
                r["to_95"] / f for r, f, can in zip(runs[other], floors, possible, strict=True) if r["to_95"] and can
            ]
            if ratios:
                best[other] = statistics.median(ratios)
        print(f"blind floor (votes to 95% no order that can't see the images could beat), per seed: "
              f"{', '.join(f'{f:,.0f}' for f in floors)}; each order's votes to 95% over the floor (median): "
              + ", ".join(f"{k} / floor {v:.2f}x" for k, v in best.items()))  # fmt: skip
        for key, what in (("to_95", "votes to 95%"), ("stays_95", "votes to 95% for good")):
            ratios = {other: ratio(runs, other, key, budget, possible) for other in ("arrival", "random")}
            verdicts.append((scenario.name, what, ratios["arrival"], ratios["random"]))
            shown = {k: "no seed reached it" if v is None else f"{v:.2f}x" for k, v in ratios.items()}
            print(f"median ratio of {what}: arrival / uncertainty {shown['arrival']}, random / uncertainty "
                  f"{shown['random']} (over the seeds where that order reached it)")  # fmt: skip
    calibrations = (
        ("estimated precision", 0, 2, "the share of the selected that are truly good at that moment", readings),
        ("expected to stay", 1, 3, "the share of the selection at that moment that the run's last selection among the same images keeps",
         readings),
        ("expected to stay", 1, 3, "the same, in the scenarios where every candidate is there from the start",
         [r for r in readings if r[4]]),
    )  # fmt: skip
    for figure, column, truth, meaning, sample in calibrations:
        print(f"\n## calibration: '{figure}' as shown against {meaning}")
        print(f"{'shown':<12} {'readings':>9} {'mean shown':>11} {'mean reached':>13} {'gap (points)':>13}")
        for low, high in ((0, 0.5), (0.5, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 0.95), (0.95, 1.01)):
            inside = [(r[column], r[truth]) for r in sample if low <= r[column] < high]
            if inside:
                shown = statistics.mean(s for s, _ in inside)
                reached = statistics.mean(p for _, p in inside)
                print(
                    f"{low:.2f}-{min(high, 1):.2f}   {len(inside):>9} {shown:>11.2f} {reached:>13.2f} "
                    f"{100 * (shown - reached):>+13.0f}"
                )
    print("\n## against the targets (>= 3x fewer votes than arrival, >= 2x fewer than random, median over seeds)")
    for name, what, vs_arrival, vs_random in verdicts:
        met = "met" if (vs_arrival or 3) >= 3 and (vs_random or 2) >= 2 else "missed"
        figures = [f"{v:.2f}x {k}" if v else f"no {k} run reached 95%" for k, v in (("arrival", vs_arrival),
                                                                                  ("random", vs_random))]  # fmt: skip
        print(f"{name:<36} {what:<22} {', '.join(figures)}: {met}")


if __name__ == "__main__":
    main()
