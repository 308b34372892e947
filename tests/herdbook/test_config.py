import pytest

from herdbook.config import ProjectConfig
from herdbook.errors import HomeError, SettingsError
from herdbook.home import init_home, load_home, resolve_home


def test_defaults_are_the_reference_run():
    config = ProjectConfig()
    assert config.base_model == "CompVis/stable-diffusion-v1-4"
    assert config.instance_prompt == "an image of the oxenai ox"
    assert (config.training.steps, config.training.learning_rate, config.training.batch_size) == (400, 5e-6, 1)
    assert config.resolution is None  # the model family's own: 512 px for SD-1.x, 1024 for SDXL
    assert "resolution" not in config.to_toml()


def test_config_round_trips_through_toml(tmp_path):
    config = ProjectConfig(base_model="/models/sd15", resolution=768)
    config.training.mode = "lora"
    config.oxen.remote = "https://hub.oxen.ai/team/ox"
    again = ProjectConfig.from_toml(config.to_toml())
    assert again == config


def test_unknown_settings_are_named(tmp_path):
    with pytest.raises(SettingsError, match=r"training\.stepz: unknown setting"):
        ProjectConfig.from_toml("[training]\nstepz = 3\n")
    with pytest.raises(HomeError, match="not valid TOML"):
        ProjectConfig.from_toml("base_model = ")


def test_each_bad_value_is_one_line_naming_key_value_and_what_is_allowed():
    text = (
        'resolution = 500\n[training]\nsteps = "lots"\nlr_scheduler = "cosine_restarts"\n[selection]\ntop_k = "ten"\n'
    )
    with pytest.raises(SettingsError) as caught:
        ProjectConfig.from_toml(text, "herdbook.toml")
    lines = str(caught.value).splitlines()
    assert len(lines) == 4
    assert "herdbook.toml: resolution = 500: " in lines[0] and "multiple of 8" in lines[0]
    assert any(line.startswith("herdbook.toml: training.steps = 'lots': ") and "integer" in line for line in lines)
    assert any("training.lr_scheduler = 'cosine_restarts'" in line and "'cosine'" in line for line in lines)
    assert any(line.startswith("herdbook.toml: selection.top_k = 'ten'") for line in lines)


def test_round_settings_refuse_unknown_keys_and_bad_values():
    from herdbook.training.settings import RoundSettings

    good = {"instance_dir": "i", "output_dir": "o", "model": {"pipeline": "p"}}
    assert RoundSettings.from_dict(good).steps == 400
    with pytest.raises(SettingsError, match="stepz: unknown setting"):
        RoundSettings.from_dict({**good, "stepz": 3})
    with pytest.raises(SettingsError, match="resolution = 500"):
        RoundSettings.from_dict({**good, "resolution": 500})
    with pytest.raises(SettingsError, match="mode = 'half'"):
        RoundSettings.from_dict({**good, "mode": "half"})


def test_training_defaults_have_one_source():
    from herdbook.training.settings import RoundSettings, TrainingDefaults, TrainingOptions

    shared = set(TrainingOptions.model_fields)
    assert shared <= set(TrainingDefaults.model_fields) and shared <= set(RoundSettings.model_fields)
    lora = TrainingDefaults(lora_learning_rate=3e-4, steps=50).for_round("lora")
    assert (lora["mode"], lora["learning_rate"], lora["steps"]) == ("lora", 3e-4, 50)


def test_a_config_holding_a_secret_is_written_for_its_owner_only(tmp_path):
    path = tmp_path / "herdbook.toml"
    ProjectConfig().save(path)
    ProjectConfig(database_url="postgresql+psycopg://ox:secret@db/herdbook").save(path)
    assert path.stat().st_mode & 0o777 == 0o600


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
