"""Does the rating queue hold on teams it was not tuned on? Votes to a 90%- and 95%-precise top K,
for the uncertainty queue against arrival order and a uniformly random order, per scenario and seed,
and how well the figures the app shows predict what they claim: the selection's estimated precision
against the share of the selected that are truly good, and the share "expected to stay" against the
share of the selection that the run's last selection keeps.

Each scenario is a project with a latent quality per image (continuous, normal), candidates
arriving in waves whose quality rises per wave, and raters with their own leniency and noise:
a rater accepts an image when its quality plus their noise clears the bar shifted by their
leniency. Some scenarios add a spammer (accepts 95% of everything) and a tiring rater (noise
grows with each vote). The truly good images are the 2K best (so a precise top K exists).

The queue is herdbook's own code, as ``queue_view`` runs it: the votes weighed by each rater's
reliability (``feedback.reliability``, as ``[selection] weigh_raters`` does by default), ranked by
``rank`` with the team, a rater's page from ``next_for`` (raters spread apart). The selection is
``select_instance_images`` over the same tallies, as ``herdbook select`` makes it, and the figures
checked are ``settledness(...)``'s, as the Dataset page and ``status`` show them.
No database: the same functions over arrays, so 75 runs fit in minutes on two cores.

    python -m bench.queue_scenarios [--seeds 5] [--only NAME]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

import numpy as np
from herdbook.feedback.queueing import Votes, next_for, rank, settledness
from herdbook.feedback.reliability import reliability
from herdbook.feedback.scoring import Tally
from herdbook.feedback.selection import RatedImage, SelectionPolicy, select_instance_images

# votes a rater casts before their page reads the queue again: the Rate page reads as often as a read
# costs each vote 5 ms (every 4th vote at 1,200 images on the 2-core machine, every vote at 72), so 10 is slow
BATCH = 10
CHECK_EVERY = 25  # votes between precision checks
CALIBRATE_EVERY = 100  # votes between settledness readings


@dataclass(frozen=True)
class Scenario:
    name: str
    candidates: int
    waves: int
    top_k: int
    raters: int
    spammer: bool = True
    tiring: bool = True


SCENARIOS = [
    Scenario("waves of 400, 8 raters, K=24", 1200, 3, 24, 8),
    Scenario("one wave of 1200, 8 raters, K=24", 1200, 1, 24, 8),
    Scenario("waves of 200, 6 raters, K=8", 600, 3, 8, 6),
    Scenario("honest team, waves of 400, K=24", 1200, 3, 24, 8, spammer=False, tiring=False),
    Scenario("small project: 72 images, K=24", 72, 1, 24, 4, spammer=False),
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
    )


def accepts(team: Team, rng: np.random.Generator, rater: int, image: int, cast_so_far: int) -> bool:
    if rater == team.spammer:
        return bool(rng.random() < 0.95)
    noise = team.noise[rater] * (1 + cast_so_far / 300 if rater == team.tiring else 1)
    return bool(team.quality[image] + rng.normal(0, noise) > team.bar + team.leniency[rater])


class Tallies:
    """The project's votes as the queue and the selection read them."""

    def __init__(self, n: int) -> None:
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
        return Votes(ids, *evidence, prompts, None, self.accepts.copy(), self.rejects.copy())


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
    tallies = Tallies(n)
    voted = np.zeros((raters, n), dtype=bool)
    cast_by = np.zeros(raters, dtype=int)
    shuffled = [rng.permutation(n) for _ in range(raters)]
    pages: list[list[int]] = [[] for _ in range(raters)]
    wave_gap = 2 * -(-n // scenario.waves)  # a wave arrives after two votes an image of the one before
    result = {"to_90": None, "to_95": None, "votes": 0, "readings": []}
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
                pages[rater] = [e.id for e in next_for(ranking, allowed, rater, raters, BATCH)[0]]
            elif order == "arrival":
                pages[rater] = [int(i) for i in np.flatnonzero(allowed)[:BATCH]]
            else:
                mine = shuffled[rater]
                pages[rater] = [int(i) for i in mine[allowed[mine]][:BATCH]]
            if not pages[rater]:
                idle += 1  # nothing this rater could vote on now; the next rater's turn
                continue
        idle = 0
        image = pages[rater].pop(0)
        if voted[rater, image]:
            continue
        voted[rater, image] = True
        tallies.add(image, rater, accepts(team, rng, rater, image, cast_by[rater]))
        cast_by[rater] += 1
        result["votes"] += 1
        votes_now = result["votes"]
        if votes_now % CHECK_EVERY == 0 and (result["to_95"] is None or order == "uncertainty"):
            votes = tallies.votes(ids)
            chosen = selection(votes, policy)
            reached = precision(chosen, policy, team.good)
            for target, key in ((0.9, "to_90"), (0.95, "to_95")):
                if result[key] is None and reached >= target:
                    result[key] = votes_now
            if order == "uncertainty" and votes_now % CALIBRATE_EVERY == 0:
                firm = settledness(votes, policy, team=raters)
                good_share = float(np.mean(team.good[chosen])) if chosen else 0.0
                result["readings"].append((firm.expected_precision, firm.expected_survivors, good_share, chosen))
            if result["to_95"] is not None and order != "uncertainty":
                break
    # what "expected to stay" claims: the share of the selection at each reading that the last one keeps
    final = set(selection(tallies.votes(ids), policy))
    result["readings"] = [
        (shown, stays, good_share, sum(i in final for i in chosen) / len(chosen) if chosen else 1.0)
        for shown, stays, good_share, chosen in result["readings"]
    ]
    return result


def ceiling(scenario: Scenario, seed: int) -> float:
    """The precision of the selection once every rater has voted on every image: what no order
    can beat at the end, though one may pass it for a moment on the way."""
    team = make_team(scenario, seed)
    rng = np.random.default_rng(seed * 7919 + len(ORDERS))
    tallies = Tallies(scenario.candidates)
    for image in range(scenario.candidates):
        for rater in range(scenario.raters):
            tallies.add(image, rater, accepts(team, rng, rater, image, image))
    policy = SelectionPolicy(top_k=scenario.top_k)
    return precision(selection(tallies.votes(np.arange(scenario.candidates)), policy), policy, team.good)


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
        print(f"{'order':<12} {'votes to 90% (per seed)':<44} {'votes to 95% (per seed)':<44}")
        medians = {}
        for order in ORDERS:
            runs = [run(scenario, order, seed) for seed in range(args.seeds)]
            if order == "uncertainty":
                for r in runs:
                    readings += [(*reading, scenario.waves == 1) for reading in r["readings"]]
            to_90 = ", ".join(describe(r["to_90"]) for r in runs)
            to_95 = ", ".join(describe(r["to_95"]) for r in runs)
            print(f"{order:<12} {to_90:<44} {to_95:<44}", flush=True)
            medians[order] = [r["to_95"] for r in runs]
        every_vote = ", ".join(f"{ceiling(scenario, seed):.0%}" for seed in range(args.seeds))
        print(f"precision once every rater voted on every image (one draw of their noise, per seed): {every_vote}")
        ratios = {}
        for other in ("arrival", "random"):
            # where the other order reached 95%; a seed where ours never did counts as the whole budget
            budget = scenario.raters * scenario.candidates
            pairs = [
                (o, budget if u is None else u)
                for o, u in zip(medians[other], medians["uncertainty"], strict=True)
                if o
            ]
            ratios[other] = statistics.median(o / u for o, u in pairs) if pairs else None
        verdicts.append((scenario.name, ratios["arrival"], ratios["random"]))
        shown = {k: "no seed reached 95%" if v is None else f"{v:.2f}x" for k, v in ratios.items()}
        print(f"median ratio of votes to 95%: arrival / uncertainty {shown['arrival']}, random / uncertainty "
              f"{shown['random']} (over the seeds where that order reached it)")  # fmt: skip
    calibrations = (
        ("estimated precision", 0, 2, "the share of the selected that are truly good at that moment", readings),
        ("expected to stay", 1, 3, "the share of the selection at that moment that the run's last selection keeps",
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
    for name, vs_arrival, vs_random in verdicts:
        met = "met" if (vs_arrival or 3) >= 3 and (vs_random or 2) >= 2 else "missed"
        figures = [f"{v:.2f}x {k}" if v else f"no {k} run reached 95%" for k, v in (("arrival", vs_arrival),
                                                                                  ("random", vs_random))]  # fmt: skip
        print(f"{name:<36} {', '.join(figures)}: {met}")


if __name__ == "__main__":
    main()
