"""The cheap check that a model can load, made before anything is queued."""

import json

from herdbook.training.components import model_problem
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


def test_generate_and_train_refuse_an_unusable_model_before_queueing_anything(tmp_path):
    home = tmp_path / "home"
    run("demo", "--home", home)
    run("vote", 1, "accept", "--rater", "ann", "--home", home)
    run("sync", "--home", home)
    for command in (["generate", "--prompt", "an ox", "--queue"], ["train", "--queue"], ["train"]):
        result = run(*command, "--home", home, ok=False)
        assert result.exit_code == 1 and "Traceback" not in result.output, command
        assert (
            "is not in the local Hugging Face cache" in result.output and "base_model in herdbook.toml" in result.output
        )
    assert json.loads(run("jobs", "--json", "--home", home).output) == []
    assert json.loads(run("rounds", "--json", "--home", home).output) == []
