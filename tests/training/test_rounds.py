"""Rounds and generation as a user runs them: records, lineage, outputs and errors."""

import dataclasses

import pytest
from herdbook.db.models import Candidate, Round
from herdbook.feedback.curation import sync
from herdbook.feedback.votes import cast_vote
from herdbook.training.components import load_components
from herdbook.training.rounds import (
    generate_candidates,
    lineage,
    list_rounds,
    plan_round,
    run_round,
    score_candidates,
)
from herdbook.training.settings import ModelChain
from sqlalchemy import func, select

from herdbook.config import ProjectConfig
from herdbook.errors import ModelLoadError
from herdbook.home import init_home
from tests.training.tiny import RESOLUTION

pytestmark = pytest.mark.slow  # trains tiny models


@pytest.fixture
def project(tmp_path, tiny_model):
    config = ProjectConfig(base_model=str(tiny_model), resolution=RESOLUTION, reference_prompts=["an ox"])
    config.training.checkpoint_every = 0
    home = init_home(tmp_path / "home", config)
    store = home.open_store()
    ids = generate_candidates(store, home.project, "an ox", "base", count=4, steps=2, seed=7)
    with store.transaction() as session:
        for cid in ids[:3]:
            cast_vote(session, cid, "ann", "accept")
        sync(session, home.dataset_repo, home.root, home.config.selection)
    return home, store


def test_generated_candidates_record_how_to_make_them_again(project):
    home, store = project
    with store.transaction() as session:
        candidates = session.scalars(select(Candidate).order_by(Candidate.id)).all()
    assert [c.seed for c in candidates] == [7, 8, 9, 10]
    first = candidates[0]
    assert first.prompt == "an ox" and first.round_id is None
    assert first.generation["steps"] == 2 and first.generation["model"] == str(home.config.base_model)
    assert first.generation["scheduler"] == "DPMSolverMultistepScheduler"  # SD-1.x's sampler, named
    assert (home.root / first.path).exists() and first.source_name == "base-seed-7.png"


def test_rounds_chain_and_generation_from_a_finished_round(project):
    home, store = project
    with store.transaction() as session:
        first = plan_round(session, home.project, mode="lora", steps=3, learning_rate=1e-2, validation_steps=2)
    done = run_round(store, home.project, first.id)
    assert done.status == "finished" and done.parent_id is None
    assert done.metrics["validation"][0]["prompt"] == "an ox"
    assert len(done.loss_history) == 3
    with store.transaction() as session:
        second = plan_round(session, home.project, mode="full", steps=2, validation_steps=2)
        assert second.parent_id == first.id
        assert list(second.settings["model"]["adapters"]) == [done.output_path]
    run_round(store, home.project, second.id)
    ids = generate_candidates(store, home.project, "the oxenai ox", "latest", count=2, steps=2)
    with store.transaction() as session:
        made = session.scalars(select(Candidate).where(Candidate.id.in_(ids))).all()
        assert {c.round_id for c in made} == {second.id}
        rows = list_rounds(session)
        assert [(r["id"], r["parent"], r["status"], r["dataset_version"]) for r in rows] == [
            (1, None, "finished", 1),
            (2, 1, "finished", 1),
        ]
        assert lineage(session)[1:] == ["└─ round 1 (lora, finished)", "   └─ round 2 (full, finished)"]
    with store.transaction() as session:
        from_base = plan_round(session, home.project, start_from="base", steps=1)
        assert from_base.parent_id is None


def test_a_round_for_a_model_that_cannot_load_is_refused_before_it_is_recorded(project, tmp_path):
    home, store = project
    home.config.base_model = str(tmp_path / "no-such-model")
    with store.transaction() as session, pytest.raises(ModelLoadError, match="there is no model folder at"):
        plan_round(session, home.project, start_from="base", steps=1)
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Round)) == 0


def test_a_round_that_fails_says_why_in_its_record(project, tmp_path, tiny_model):
    import shutil

    home, store = project
    home.config.base_model = str(shutil.copytree(tiny_model, tmp_path / "moved-later"))
    with store.transaction() as session:
        planned = plan_round(session, home.project, start_from="base", steps=1)
    shutil.rmtree(tmp_path / "moved-later")  # the model went away between planning and training
    with pytest.raises(ModelLoadError, match="no model folder at"):
        run_round(store, home.project, planned.id)
    with store.transaction() as session:
        record = session.get(Round, planned.id)
        assert record.status == "failed" and "no model folder" in record.error


def test_missing_models_are_named(monkeypatch):
    with pytest.raises(ModelLoadError, match="no model folder at /nowhere/sd"):
        load_components(ModelChain("/nowhere/sd"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="herdbook-tests/not-a-model is not in the local Hugging Face cache"):
        load_components(ModelChain("herdbook-tests/not-a-model"))


def test_a_model_missing_from_the_cache_fails_at_once_when_the_hub_is_unreachable(monkeypatch):
    """Without HF_HUB_OFFLINE, a machine that can't reach the hub waited ~50 s a model while the
    library retried (each round's DINO and CLIP, each generation's scoring); it is refused in one line."""
    import socket

    from herdbook.training import models

    def no_route(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(socket, "create_connection", no_route)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache and the hub is unreachable"):
        load_components(ModelChain("herdbook-tests/not-a-model"))  # the probe's answer, not the library's retries
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # through a proxy, the library is left to try
    assert models.hub_reachable()


def test_the_comparison_grid_holds_the_base_and_each_round_at_the_same_prompts(project):
    from herdbook.training.rounds import comparison_grid

    home, store = project
    with store.transaction() as session:
        planned = plan_round(session, home.project, mode="lora", steps=1, validation_steps=2, validation_seeds=[3, 4])
    run_round(store, home.project, planned.id)
    with store.transaction() as session:
        grid = comparison_grid(session, home.project)
    contexts = home.config.evaluation.prompts(home.config.instance_prompt, [])
    assert grid["prompts"] == ["an ox", *contexts] and grid["seeds"] == [3, 4]  # each once, however many share them
    assert [c["label"] for c in grid["columns"]] == ["base", "round 1 (lora)"]
    assert all(c["images"][("an ox", 3)].exists() for c in grid["columns"])


def test_class_images_are_cached_per_everything_that_changes_them(project):
    home, store = project
    with store.transaction() as session:
        at_32 = plan_round(session, home.project, prior_preservation=True, steps=1)
        at_48 = plan_round(session, home.project, prior_preservation=True, steps=1, resolution=48)
        other_prompt = plan_round(session, home.project, prior_preservation=True, steps=1, class_prompt="a cow")
        again = plan_round(session, home.project, prior_preservation=True, steps=2)
    dirs = [r.settings["class_dir"] for r in (at_32, at_48, other_prompt, again)]
    assert len(set(dirs[:3])) == 3 and dirs[3] == dirs[0]
    assert "48px" in dirs[1]


def test_a_bad_setting_is_refused_before_any_round_is_recorded(project):
    from herdbook.errors import SettingsError

    home, store = project
    with store.transaction() as session, pytest.raises(SettingsError, match="resolution = 500"):
        plan_round(session, home.project, resolution=500)
    with store.transaction() as session:
        assert list_rounds(session) == []


def test_a_started_round_records_the_rating_weights_it_trains_with(project):
    from herdbook.training.rounds import claim_round, start_round

    home, store = project
    with store.transaction() as session:
        planned = plan_round(session, home.project, weight_by_rating=True, steps=1)
        claim_round(session, planned.id)
        start_round(session, home.project, planned.id)
        weights = session.get(Round, planned.id).settings["rating_weights"]
    assert len(weights) == 3 and all(w > 0.5 for w in weights.values())


def test_a_round_still_beating_is_refused_with_when_it_will_count_as_interrupted(project):
    """Right after a kill -9 the round's heartbeat is fresh: resume refuses, and says when it
    will count as interrupted, so the user knows to wait rather than hunt for a process."""
    from datetime import timedelta

    from herdbook.training.rounds import cancel_round, claim_round, resumable, utcnow

    from herdbook.errors import HerdbookError

    home, store = project
    with store.transaction() as session:
        planned = plan_round(session, home.project, steps=1)
        claim_round(session, planned.id)
        session.get(Round, planned.id).heartbeat_at = utcnow() - timedelta(seconds=30)
    for refuse in (
        lambda session: resumable(session, planned.id, 120),
        lambda session: cancel_round(session, planned.id, 120),
        lambda session: claim_round(session, planned.id, 120),
    ):
        with store.transaction() as session, pytest.raises(HerdbookError) as refused:
            refuse(session)
        message = str(refused.value)
        assert "training in another process (its last heartbeat 30 s ago)" in message
        assert "counts as interrupted in 90 s" in message
    with store.transaction() as session:
        assert resumable(session, planned.id, 20).id == planned.id  # stale after 20 s: it may resume


def test_generated_candidates_are_stored_batch_by_batch(project):
    home, store = project
    heard: list[list[int]] = []
    ids = generate_candidates(store, home.project, "an ox", "base", count=6, steps=2, seed=50, stored=heard.append)
    assert [len(batch) for batch in heard] == [4, 6] and heard[-1] == ids  # 4 a batch: told after each


def test_two_processes_resuming_one_round_at_once_run_it_once(project, monkeypatch):
    """The second resume of an interrupted round arrives while the first is exporting its
    instance images: it is refused before it touches them (it used to clear the folder the
    first was filling)."""
    import threading

    from herdbook.training import rounds

    from herdbook.errors import HerdbookError

    home, store = project
    with store.transaction() as session:
        planned = plan_round(session, home.project, steps=1)
        session.get(Round, planned.id).status = "interrupted"
    exporting, second_done, entered = threading.Event(), threading.Event(), []
    export = rounds.export_version

    def slow_export(*args, **kwargs):
        entered.append(threading.current_thread().name)
        exporting.set()
        second_done.wait(timeout=60)  # the first holds here until the second has tried
        return export(*args, **kwargs)

    monkeypatch.setattr(rounds, "export_version", slow_export)

    def first():
        with store.transaction() as session:
            rounds.claim_round(session, planned.id)
        with store.transaction() as session:
            rounds.start_round(session, home.project, planned.id)

    thread = threading.Thread(target=first, name="first")
    thread.start()
    assert exporting.wait(timeout=60)
    try:
        with pytest.raises(HerdbookError, match="training in another process"), store.transaction() as session:
            rounds.claim_round(session, planned.id)
    finally:
        second_done.set()
        thread.join(timeout=60)
    assert entered == ["first"]
    assert (home.root / "rounds" / f"round-{planned.id:03d}" / "instance" / "instance.csv").exists()


def test_a_finished_round_is_judged_against_its_instance_images(project, tiny_judges):
    import json

    from herdbook.training.rounds import report_lines

    home, store = project
    judged = dataclasses.replace(home.project, evaluation=tiny_judges)
    with store.transaction() as session:
        planned = plan_round(session, judged, mode="lora", steps=1, validation_steps=2)
    done = run_round(store, judged, planned.id)
    report = done.metrics["evaluation"]
    prompts = 1 + len(tiny_judges.context_prompts)
    for key in ("dino", "clip_i", "clip_t"):
        assert report[key]["images"] == prompts * len(tiny_judges.seeds)
        assert -1.0 <= report[key]["mean"] <= 1.0 and report[key]["spread"] >= 0
        assert report["start"][key]["images"] == report[key]["images"]  # the base, on the same prompts and seeds
    assert report["instance_images"] == 3
    assert list(done.metrics["phases"])[-1] == "fidelity report"  # what `herdbook train` waited for, last
    on_disk = json.loads((home.project.round_dir(planned.id) / "metrics.json").read_text())
    assert on_disk["evaluation"] == report
    with store.transaction() as session:
        (row,) = list_rounds(session)
    assert row["dino"] == report["dino"]["mean"] and row["clip_t"] == report["clip_t"]["mean"]
    assert row["start_dino"] == report["start"]["dino"]["mean"] and row["fidelity_missing"] is None
    assert report_lines(report)[0].startswith("DINO   ") and "starting model" in report_lines(report)[0]


def test_a_round_with_no_judge_to_load_still_finishes_and_says_why(project):
    home, store = project  # [evaluation] names hub ids; the tests run with HF_HUB_OFFLINE=1
    with store.transaction() as session:
        planned = plan_round(session, home.project, mode="lora", steps=1, validation_steps=2)
    done = run_round(store, home.project, planned.id)
    assert done.status == "finished"
    assert done.metrics["evaluation"]["error"].startswith("no fidelity report: facebook/dino-vits16 is not in")
    with store.transaction() as session:
        (row,) = list_rounds(session)
    assert row["dino"] is None and row["fidelity_missing"].startswith("no fidelity report")


def test_generated_candidates_are_scored_against_the_instance_set_and_their_prompt(project, tiny_judges):
    from herdbook.feedback.catalog import list_candidates
    from herdbook.feedback.votes import QueueFilter, queue_view

    home, store = project  # three of four base candidates accepted and synced: the instance set
    judged = dataclasses.replace(home.project, evaluation=tiny_judges)
    ids = generate_candidates(store, judged, "an ox", "base", count=2, steps=2, seed=20)
    assert score_candidates(store, judged, ids) is None
    with store.transaction() as session:
        made = list_candidates(session, ids=ids)
        assert all(-1 <= r.dino <= 1 and -1 <= r.clip_t <= 1 for r in made)
        entries, _ = queue_view(session, "bob", QueueFilter(order="most-alike"))
    scored = sorted(made, key=lambda r: -r.dino)
    assert [e.id for e in entries[:2]] == [r.id for r in scored]  # the most alike first
    assert entries[0].reason == f"DINO {scored[0].dino:.2f} to the instance set"


def test_dino_agrees_with_votes_where_the_accepted_images_are_the_alike_ones(tmp_path, tiny_judges):
    """Near-copies of the instance images accepted, unrelated images rejected: AUC 1."""
    import random

    from herdbook.feedback.catalog import fidelity_agreement
    from herdbook.feedback.ingest import ImportRow, import_images
    from PIL import Image

    from tests.conftest import make_image

    def near_copy(source, path, seed):
        image = Image.open(source).convert("RGB")
        pixels, rng = image.load(), random.Random(seed)
        for _ in range(40):
            x, y = rng.randrange(image.width), rng.randrange(image.height)
            pixels[x, y] = tuple(min(255, c + 30) for c in pixels[x, y])
        image.save(path)
        return path

    folder = tmp_path / "images"
    original = make_image(folder / "ox.png", seed=1)
    alike = [near_copy(original, folder / f"alike-{i}.png", i) for i in range(5)]
    unlike = [make_image(folder / f"other-{i}.png", seed=100 + i) for i in range(5)]
    config = ProjectConfig(evaluation=tiny_judges)
    config.selection.near_duplicate_distance = 0  # the near-copies all count
    home = init_home(tmp_path / "home", config)
    store = home.open_store()
    with store.transaction() as session:
        import_images(
            session,
            folder,
            home.candidates_dir,
            home.root,
            [ImportRow(p.name, "an ox") for p in [original, *alike, *unlike]],
        )
    with store.transaction() as session:
        cast_vote(session, 1, "ann", "accept")
        sync(session, home.dataset_repo, home.root, home.config.selection)  # the instance set: the original
    assert score_candidates(store, home.project, list(range(1, 12))) is None
    with store.transaction() as session:
        for cid in range(2, 7):
            cast_vote(session, cid, "ann", "accept")
        for cid in range(7, 12):
            cast_vote(session, cid, "ann", "reject")
        agreement = fidelity_agreement(session)
    # the original is the whole instance set: with its own copy left out it has nothing to be like
    assert agreement["dino"] == {"auc": 1.0, "accepted": 5, "rejected": 5}


def test_a_damaged_candidate_file_is_named_and_the_others_are_scored(project, tiny_judges):
    from herdbook.feedback.catalog import list_candidates

    home, store = project
    judged = dataclasses.replace(home.project, evaluation=tiny_judges)
    with store.transaction() as session:
        rows = list_candidates(session)
    (home.root / rows[3].path).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert score_candidates(store, judged, [r.id for r in rows]) == (
        f"candidates {rows[3].id} not scored: their files are missing or damaged"
    )
    with store.transaction() as session:
        scored = {r.id: r.clip_t for r in list_candidates(session)}
    assert scored[rows[3].id] is None and all(scored[r.id] is not None for r in rows[:3])
