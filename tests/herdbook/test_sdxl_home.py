"""A project whose base model is an SDXL: the loop from the command line and the app, on a tiny
random-weight SDXL (no download). Nothing tells herdbook it is SDXL: it reads the folder."""

import json

import pytest
from click.testing import CliRunner
from herdbook.db.models import Candidate, Job
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from herdbook.cli import main
from herdbook.config import ProjectConfig
from herdbook.home import init_home, load_home
from tests.conftest import make_image, write_csv
from tests.training.tiny import RESOLUTION

pytestmark = pytest.mark.slow  # trains a tiny model


def run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def page(module: str) -> AppTest:
    def script(module):
        import importlib

        importlib.import_module(f"herdbook.app.{module}").page()

    return AppTest.from_function(script, kwargs={"module": module}, default_timeout=30)


@pytest.fixture
def sdxl_home(tmp_path, tiny_sdxl_model, monkeypatch):
    """An SDXL project at the tiny model's size, with four accepted images synced."""
    config = ProjectConfig(base_model=str(tiny_sdxl_model), resolution=RESOLUTION, reference_prompts=["an ox"])
    home = init_home(tmp_path / "home", config.with_changes(training=config.training.with_changes(steps=3)))
    images = tmp_path / "images"
    for i in range(4):
        make_image(images / f"ox-{i}.png", seed=i, size=(48, 48))
    write_csv(images / "prompts.csv", [{"file": f"ox-{i}.png", "prompt": "the oxenai ox"} for i in range(4)])
    run("import", images, "--prompts", images / "prompts.csv", "--home", home.root)
    for candidate in range(1, 5):
        run("vote", candidate, "accept", "--rater", "ann", "--home", home.root)
    run("sync", "--home", home.root)
    monkeypatch.setenv("HERDBOOK_HOME", str(home.root))
    return home


def test_an_sdxl_round_trains_from_the_cli_and_generates_candidates_of_its_size(sdxl_home):
    home = sdxl_home.root
    assert "Round 1 (lora)" in run("train", "--mode", "lora", "--home", home).output
    rounds = json.loads(run("rounds", "--json", "--home", home).output)
    assert (rounds[0]["family"], rounds[0]["status"], rounds[0]["resolution"]) == ("sdxl", "finished", RESOLUTION)
    assert rounds[0]["phases"]["start-up"] > 0 and rounds[0]["phases"]["steps"] > 0  # from the command's start
    output = run("generate", "--prompt", "an ox", "-n", "2", "--round", "1", "--home", home).output
    assert "Added 2 candidate(s)" in output
    assert "s in all: start-up" in output and "model load" in output  # where the wait went
    with load_home(home).open_store().transaction() as session:
        made = session.scalars(select(Candidate).where(Candidate.round_id == 1)).all()
        assert [(c.width, c.height) for c in made] == [(RESOLUTION, RESOLUTION)] * 2
        assert {c.generation["resolution"] for c in made} == {RESOLUTION}
        assert {c.generation["guidance_scale"] for c in made} == {5.0}  # SDXL's own default
        assert {c.generation["scheduler"] for c in made} == {"EulerDiscreteScheduler"}  # the model's own sampler


def test_an_sdxl_project_without_a_size_trains_and_draws_at_1024(sdxl_home):
    from herdbook.training.rounds import generation_settings, plan_round

    from herdbook.home import change_config

    home = change_config(sdxl_home.root, resolution=None)
    assert "resolution" not in home.config_path.read_text()  # unset: the model's own
    with home.open_store().transaction() as session:
        record = plan_round(session, home.project, steps=1)
        assert (record.settings["family"], record.settings["resolution"]) == ("sdxl", 1024)
        assert record.settings["guidance_scale"] == 5.0
        generation, _ = generation_settings(session, home.project, "an ox")
        assert (generation.resolution, generation.guidance_scale) == (1024, 5.0)


def test_the_rounds_and_generate_pages_work_on_an_sdxl_home(sdxl_home):
    run("train", "--mode", "lora", "--home", sdxl_home.root)
    at = page("rounds").run()
    assert not at.error
    table = at.dataframe[0].value
    assert (table["Model"].tolist(), table["Status"].tolist()) == (["SDXL"], ["finished"])
    assert list(table.columns)[:4] == ["Round", "Status", "Started", "Finished"]  # in view at 1024 px
    times = at.dataframe[1].value  # where the round's time went: a row per phase, the total first
    assert list(times.columns) == ["round 1"] and times.index[0] == "in all"
    assert {"model load", "steps"} <= set(times.index) and times.loc["in all", "round 1"].endswith(" s")
    grid = [caption for row in at.get("image") for caption in row.captions]
    assert grid[:4] == ["base · seed 0", "round 1 (lora) · seed 0", "base · seed 1", "round 1 (lora) · seed 1"]
    assert len(grid) == 2 * 4 * 4  # base and round x (the reference prompt and three new contexts) x four seeds
    assert any(f"(SDXL, {RESOLUTION} px)" in expander.label for expander in at.expander)  # as read, at its size
    at = page("generate").run()
    assert not at.error
    at.text_input(key="prompt").input("an ox in the snow")
    at.button(key="generate").click().run()
    assert "Queued job" in at.toast[0].value
    with sdxl_home.open_store().transaction() as session:
        assert session.scalars(select(Job).where(Job.kind == "generate")).one().params["prompt"] == "an ox in the snow"
