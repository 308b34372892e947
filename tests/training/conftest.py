import pytest

from tests.conftest import make_image
from tests.training.tiny import RESOLUTION


@pytest.fixture(autouse=True)
def quiet_libraries():
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


@pytest.fixture
def instance_dir(tmp_path):
    folder = tmp_path / "instance"
    for i in range(4):
        make_image(folder / f"ox-{i}.png", seed=i, size=(48, 48))
    return folder


@pytest.fixture
def settings_for(tmp_path, tiny_model, instance_dir):
    from herdbook.training.settings import ModelChain, RoundSettings

    def make(name="round", **overrides):
        values = dict(
            instance_dir=str(instance_dir),
            output_dir=str(tmp_path / name),
            model=ModelChain(str(tiny_model)),
            resolution=RESOLUTION,
            steps=6,
            learning_rate=1e-3,
            lora_rank=4,
            checkpoint_every=0,
            validation_prompts=[],
            validation_steps=2,
            generation_steps=2,
            num_class_images=2,
        )
        values.update(overrides)
        return RoundSettings(**values)

    return make
