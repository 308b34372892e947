import pytest
import torch
from herdbook.training.lineage import RoundNode, chain_for, tree_lines
from herdbook.training.losses import batch_indices, diffusion_target, dreambooth_loss, step_generator
from herdbook.training.settings import ModelChain, RoundSettings

from herdbook.errors import NotFound


def test_loss_without_prior_is_plain_mse():
    pred, target = torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2)
    loss, parts = dreambooth_loss(pred, target, with_prior=False)
    assert loss.item() == pytest.approx(1.0) and set(parts) == {"instance"}


def test_prior_loss_weights_the_class_half():
    pred = torch.cat([torch.zeros(1, 4), torch.zeros(1, 4)])
    target = torch.cat([torch.ones(1, 4), 2 * torch.ones(1, 4)])
    loss, parts = dreambooth_loss(pred, target, with_prior=True, prior_loss_weight=0.5)
    assert {k: v.item() for k, v in parts.items()} == {"instance": 1.0, "prior": 4.0}
    assert loss.item() == pytest.approx(1.0 + 0.5 * 4.0)


def test_target_follows_the_prediction_type():
    noise, velocity = torch.ones(1), torch.full((1,), 2.0)
    assert diffusion_target("epsilon", torch.zeros(1), noise, None) is noise
    assert diffusion_target("v_prediction", torch.zeros(1), noise, velocity) is velocity
    with pytest.raises(ValueError):
        diffusion_target("sample", torch.zeros(1), noise, None)


def test_draws_depend_only_on_seed_and_step():
    a = batch_indices(6, 4, step_generator(3, 10))
    b = batch_indices(6, 4, step_generator(3, 10))
    c = batch_indices(6, 4, step_generator(3, 11))
    assert a == b and a != c


ROUNDS = {
    1: RoundNode(1, None, "full", "finished", "sd", "/r1/model"),
    2: RoundNode(2, 1, "lora", "finished", "sd", "/r2/lora"),
    3: RoundNode(3, 2, "lora", "finished", "sd", "/r3/lora"),
    4: RoundNode(4, None, "lora", "running", "sd", None),
}


def test_model_chain_follows_the_lineage():
    assert chain_for(None, ROUNDS, "sd") == ModelChain("sd")
    assert chain_for(1, ROUNDS, "sd") == ModelChain("/r1/model")
    assert chain_for(3, ROUNDS, "sd") == ModelChain("/r1/model", ("/r2/lora", "/r3/lora"))
    with pytest.raises(NotFound, match="has not finished"):
        chain_for(4, ROUNDS, "sd")
    with pytest.raises(NotFound):
        chain_for(9, ROUNDS, "sd")


def test_lineage_tree_draws_children_under_parents():
    assert tree_lines(ROUNDS) == [
        "base",
        "├─ round 1 (full, finished)",
        "│  └─ round 2 (lora, finished)",
        "│     └─ round 3 (lora, finished)",
        "└─ round 4 (lora, running)",
    ]


def test_settings_refuse_nonsense_and_round_trip():
    with pytest.raises(ValueError):
        RoundSettings(instance_dir="i", output_dir="o", model=ModelChain("m"), mode="half")
    with pytest.raises(ValueError):
        RoundSettings(instance_dir="i", output_dir="o", model=ModelChain("m"), resolution=500)
    settings = RoundSettings(instance_dir="i", output_dir="o", model=ModelChain("m", ("a",)), steps=7)
    assert RoundSettings.from_json(settings.to_json()) == settings
    assert (
        settings.resolution,
        settings.batch_size,
        settings.learning_rate,
        settings.lr_scheduler,
        settings.steps,
    ) == (512, 1, 5e-6, "constant", 7)
