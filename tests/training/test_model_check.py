"""The cheap check that a model can load before anything is queued, and the demo that trains."""

import json

import pytest
from herdbook.training.models import model_problem, on_this_machine
from herdbook.training.settings import ModelChain

from tests.herdbook.test_cli import run


def test_each_cause_is_named_for_what_it_is(tmp_path, tiny_model, monkeypatch):
    assert model_problem(ModelChain(str(tiny_model))) is None
    assert "there is no model folder at" in model_problem(ModelChain(str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    assert "is not a diffusers model folder" in model_problem(ModelChain(str(tmp_path / "empty")))
    assert "adapter" in model_problem(ModelChain(str(tiny_model), (str(tmp_path / "gone-lora"),)))
    hub_id = ModelChain("herdbook-tests/not-cached")
    assert "HF_HUB_OFFLINE=1" in model_problem(hub_id)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert "the Hugging Face hub is unreachable" in model_problem(hub_id, reachable=lambda: False)
    assert model_problem(hub_id, reachable=lambda: True) is None  # let the download try


def test_a_model_is_on_this_machine_only_where_it_loads_without_a_download(tmp_path, tiny_model, monkeypatch):
    """What a worker preloads at its start: never a download nobody asked for."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    assert on_this_machine(ModelChain(str(tiny_model)))
    assert not on_this_machine(ModelChain(str(tiny_model), (str(tmp_path / "gone-lora"),)))
    assert not on_this_machine(ModelChain("stable-diffusion-v1-5/stable-diffusion-v1-5"))
    assert not on_this_machine(ModelChain(str(tmp_path / "no-such-folder")))


def test_generate_and_train_refuse_an_unusable_model_before_queueing_anything(tmp_path):
    home = tmp_path / "home"
    run("demo", "--home", home)
    run("vote", 1, "accept", "--rater", "ann", "--home", home)
    run("sync", "--home", home)
    config = home / "herdbook.toml"
    lines = [
        'base_model = "CompVis/stable-diffusion-v1-4"' if line.startswith("base_model =") else line
        for line in config.read_text().splitlines()
    ]
    config.write_text("\n".join(lines) + "\n")  # a hub id, not cached, with the hub off
    for command in (["generate", "--prompt", "an ox", "--queue"], ["train", "--queue"], ["train"]):
        result = run(*command, "--home", home, ok=False)
        assert result.exit_code == 1 and "Traceback" not in result.output, command
        assert (
            "is not in the local Hugging Face cache" in result.output and "base_model in herdbook.toml" in result.output
        )
    assert json.loads(run("jobs", "--json", "--home", home).output) == []
    assert json.loads(run("rounds", "--json", "--home", home).output) == []
    assert [a["action"] for a in json.loads(run("log", "--json", "--home", home).output)] == ["sync"]  # nothing else


@pytest.mark.slow  # seconds: out of the quick loop
def test_the_demo_runs_the_whole_loop_on_a_tiny_model_built_here(tmp_path):
    """Rate, sync, train, generate from the new round, see the new images queued: no download."""
    import pytest

    pytest.importorskip("diffusers")
    home = tmp_path / "demo"
    assert "tiny random-weight demo model" in run("demo", "--home", home).output
    for cid in (1, 2, 3):
        run("vote", cid, "accept", "--rater", "ann", "--home", home)
    run("sync", "--home", home)
    trained = run("train", "--mode", "lora", "--steps", "3", "--home", home).output
    assert "Round 1 finished" in trained
    assert "(cli): start round  round=1" in run("log", "--home", home).output  # who started it
    made = run("generate", "--prompt", "the oxenai ox", "-n", "2", "--round", "latest", "--steps", "2", "--home", home)
    assert "Added 2 candidate(s) from latest" in made.output
    queue = json.loads(run("queue", "--rater", "bob", "-n", "100", "--json", "--home", home).output)
    assert {37, 38} <= {e["id"] for e in queue}  # the new round's images join the queue
    listed = json.loads(run("candidates", "--json", "--home", home).output)
    assert {c["round"] for c in listed if c["id"] in (37, 38)} == {1}
