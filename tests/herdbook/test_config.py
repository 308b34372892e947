import pytest

from herdbook.config import ProjectConfig
from herdbook.errors import HomeError
from herdbook.home import init_home, load_home, resolve_home


def test_defaults_are_the_reference_run():
    config = ProjectConfig()
    assert config.base_model == "CompVis/stable-diffusion-v1-4"
    assert config.instance_prompt == "an image of the oxenai ox"
    assert (config.resolution, config.training.steps, config.training.learning_rate, config.training.batch_size) == (
        512,
        400,
        5e-6,
        1,
    )


def test_config_round_trips_through_toml(tmp_path):
    config = ProjectConfig(base_model="/models/sd15", resolution=768)
    config.training.mode = "lora"
    config.oxen.remote = "https://hub.oxen.ai/team/ox"
    again = ProjectConfig.from_toml(config.to_toml())
    assert again == config


def test_unknown_settings_are_named(tmp_path):
    with pytest.raises(HomeError, match=r"training\.stepz"):
        ProjectConfig.from_toml("[training]\nstepz = 3\n")
    with pytest.raises(HomeError, match="not valid TOML"):
        ProjectConfig.from_toml("base_model = ")


def test_home_is_chosen_by_flag_then_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_home() == tmp_path / "herdbook-home"
    monkeypatch.setenv("HERDBOOK_HOME", str(tmp_path / "env-home"))
    assert resolve_home() == tmp_path / "env-home"
    assert resolve_home(tmp_path / "flag") == tmp_path / "flag"


def test_init_makes_every_part_and_refuses_to_overwrite(tmp_path):
    home = init_home(tmp_path / "h")
    assert (home.root / "herdbook.toml").exists()
    assert (home.root / "herdbook.db").exists()
    assert (home.dataset_dir / ".oxen").is_dir()
    with pytest.raises(HomeError, match="already"):
        init_home(tmp_path / "h")
    assert load_home(tmp_path / "h").config == home.config


def test_loading_a_missing_home_says_how_to_make_one(tmp_path):
    with pytest.raises(HomeError, match="herdbook init"):
        load_home(tmp_path / "nothing")
