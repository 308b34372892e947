"""SDXL rounds and generation on a tiny random-weight SDXL, on the CPU: what works for SD-1.x
works for SDXL, and what a round saves loads in plain diffusers."""

import json

import pytest
import torch
from herdbook.training.components import load_components, sampling_pipeline
from herdbook.training.dreambooth import train
from herdbook.training.errors import ModelLoadError
from herdbook.training.families import SD1, SDXL
from herdbook.training.models import model_family
from herdbook.training.settings import ModelChain

from tests.training.tiny import RESOLUTION

pytestmark = pytest.mark.slow  # trains tiny models


@pytest.fixture
def sdxl_settings(settings_for, tiny_sdxl_model):
    def make(name="sdxl", **overrides):
        return settings_for(name, **{"model": ModelChain(str(tiny_sdxl_model)), "family": "sdxl", **overrides})

    return make


def plain_pipeline(folder):
    from diffusers import StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline.from_pretrained(str(folder))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def draw_plain(pipeline, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return pipeline(
        "an ox", num_inference_steps=2, height=RESOLUTION, width=RESOLUTION, generator=generator, output_type="np"
    ).images


def unet_weights(model) -> dict:
    return {k: v.detach().clone().float() for k, v in model.unet.state_dict().items()}


def test_the_family_is_read_from_the_folder(tiny_model, tiny_sdxl_model, tmp_path):
    assert model_family(str(tiny_sdxl_model)) is SDXL and model_family(str(tiny_model)) is SD1
    parts = load_components(ModelChain(str(tiny_sdxl_model)))
    assert parts.family is SDXL and type(parts.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert type(parts.inference_scheduler).__name__ == "EulerDiscreteScheduler"  # the model's own sampler


def test_a_model_herdbook_cannot_train_gets_one_line_saying_what_was_found(tmp_path):
    other = tmp_path / "flux"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError) as error:
        load_components(ModelChain(str(other)))
    message = str(error.value)
    assert "\n" not in message and "FluxPipeline" in message and "SDXL" in message and "1.x" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers model folder"):
        model_family(str(empty))


def test_prompts_are_embedded_as_diffusers_sdxl_pipeline_embeds_them(tiny_sdxl_model):
    """Both encoders' penultimate hidden states joined, the second's pooled embedding, and the
    size conditioning the pipeline gives for an image of the training size."""
    parts = load_components(ModelChain(str(tiny_sdxl_model)))
    pipeline = plain_pipeline(tiny_sdxl_model)
    with torch.no_grad():
        ours = SDXL.embed(parts.text_encoders, SDXL.tokenize(parts, ["an image of the oxenai ox"]))
        hidden, _, pooled, _ = pipeline.encode_prompt("an image of the oxenai ox", do_classifier_free_guidance=False)
    assert torch.allclose(ours.hidden, hidden, atol=1e-6) and torch.allclose(ours.pooled, pooled, atol=1e-6)
    size = (RESOLUTION, RESOLUTION)
    theirs = pipeline._get_add_time_ids(
        size,
        (0, 0),
        size,
        dtype=torch.float32,
        text_encoder_projection_dim=pipeline.text_encoder_2.config.projection_dim,
    )
    assert torch.equal(SDXL.added_conditioning(ours, SDXL.size_ids(RESOLUTION, 1))["time_ids"], theirs)


def test_a_lora_round_trains_an_adapter_that_plain_diffusers_loads_on_the_base(sdxl_settings, tiny_sdxl_model):
    result = train(sdxl_settings("lora", mode="lora", steps=20, learning_rate=1e-2))
    assert (result.output / "pytorch_lora_weights.safetensors").exists()
    assert result.metrics["family"] == "sdxl"
    assert result.metrics["probe_loss_after"] < result.metrics["probe_loss_before"]
    pipeline = plain_pipeline(tiny_sdxl_model)
    before = draw_plain(pipeline)
    pipeline.load_lora_weights(str(result.output))
    after = draw_plain(pipeline)
    assert after.shape == (1, RESOLUTION, RESOLUTION, 3) and not (before == after).all()


def test_a_full_round_loads_alone_and_samples_with_the_bases_scheduler(sdxl_settings, tiny_sdxl_model):
    settings = sdxl_settings("full", steps=20, validation_prompts=["an ox"], validation_seeds=[0])
    result = train(settings)
    assert result.output.name == "model"
    pipeline = plain_pipeline(result.output)
    base = plain_pipeline(tiny_sdxl_model)
    assert type(pipeline.scheduler).__name__ == type(base.scheduler).__name__ == "EulerDiscreteScheduler"
    assert draw_plain(pipeline).shape == (1, RESOLUTION, RESOLUTION, 3)
    moved = unet_weights(pipeline)
    assert any(not torch.equal(moved[k], w) for k, w in unet_weights(base).items())
    assert result.metrics["probe_loss_after"] < result.metrics["probe_loss_before"] * 0.9
    assert (settings.output / "validation" / "p0-s0.png").exists()


def test_a_lora_round_with_the_text_encoders_changes_both(sdxl_settings, tiny_sdxl_model):
    from safetensors.torch import load_file

    result = train(sdxl_settings("lora-te", mode="lora", train_text_encoder=True, steps=8, learning_rate=1e-2))
    saved = load_file(result.output / "pytorch_lora_weights.safetensors")
    assert {key.split(".")[0] for key in saved} == {"unet", "text_encoder", "text_encoder_2"}
    pipeline = plain_pipeline(tiny_sdxl_model)
    with torch.no_grad():
        before = pipeline.encode_prompt("an ox", do_classifier_free_guidance=False)
        pipeline.load_lora_weights(str(result.output))
        after = pipeline.encode_prompt("an ox", do_classifier_free_guidance=False)
    width = pipeline.text_encoder.config.hidden_size
    first, second = (before[0][..., :width], after[0][..., :width]), (before[0][..., width:], after[0][..., width:])
    assert not torch.allclose(*first), "the first encoder's adapter changed nothing"
    assert not torch.allclose(*second) and not torch.allclose(before[2], after[2]), "the second's changed nothing"


def test_a_resumed_sdxl_round_ends_where_an_uninterrupted_one_does(sdxl_settings):
    whole = train(sdxl_settings("whole", mode="lora", steps=6, checkpoint_every=3))

    class Crash(Exception):
        pass

    def crash(step, total, loss):
        if step == 4:
            raise Crash

    interrupted = sdxl_settings("interrupted", mode="lora", steps=6, checkpoint_every=3)
    with pytest.raises(Crash):
        train(interrupted, progress=crash)
    resumed = train(interrupted)
    assert resumed.metrics["first_step"] == 4
    from safetensors.torch import load_file

    a = load_file(whole.output / "pytorch_lora_weights.safetensors")
    b = load_file(resumed.output / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [x for _, x in whole.loss_history] == [x for _, x in resumed.loss_history]


def test_the_fast_step_learns_what_the_reference_step_learns_on_sdxl(sdxl_settings):
    fast = train(sdxl_settings("fast", steps=6, fast_path="auto"))
    reference = train(sdxl_settings("reference", steps=6, fast_path="off"))
    assert fast.metrics["fast_path"] and not reference.metrics["fast_path"]
    assert [x for _, x in fast.loss_history] == pytest.approx([x for _, x in reference.loss_history], rel=1e-3)
    a, b = unet_weights(plain_pipeline(fast.output)), unet_weights(plain_pipeline(reference.output))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_encoding_every_step_is_the_same_math_as_encoding_once_on_sdxl(sdxl_settings):
    """The reference row of the benchmark runs the VAE and both encoders every step."""
    cached = train(sdxl_settings("cached", steps=3, fast_path="off"))
    every_step = train(sdxl_settings("every-step", steps=3, cache_encodings=False, fast_path="off"))
    assert [x for _, x in cached.loss_history] == pytest.approx([x for _, x in every_step.loss_history], rel=2e-2)


def test_a_lora_round_stacks_on_a_lora_round_and_prior_preservation_draws_class_images(sdxl_settings, tmp_path):
    first = train(sdxl_settings("first", mode="lora", steps=3, learning_rate=1e-2))
    chain = ModelChain(sdxl_settings().model.pipeline, (str(first.output),))
    class_dir = tmp_path / "class"
    second = train(
        sdxl_settings("second", model=chain, mode="lora", steps=3, prior_preservation=True, class_dir=str(class_dir))
    )
    assert len(list(class_dir.glob("*.png"))) == 2 and second.metrics["family"] == "sdxl"
    stacked = load_components(ModelChain(chain.pipeline, (*chain.adapters, str(second.output))))
    assert stacked.family is SDXL


def test_generation_draws_with_size_conditioning_and_the_graphed_unet_draws_the_same(tiny_sdxl_model):
    import numpy as np
    from herdbook.training.generate import draw
    from herdbook.training.graphs import GraphedUNet

    pipeline = sampling_pipeline(load_components(ModelChain(str(tiny_sdxl_model))), torch.device("cpu"), torch.float32)
    plain = draw(pipeline, "an ox", [0, 1], 2, 5.0, RESOLUTION)
    pipeline.unet = GraphedUNet(pipeline.unet)
    graphed = draw(pipeline, "an ox", [0, 1], 2, 5.0, RESOLUTION)
    assert [image.size for image in plain] == [(RESOLUTION, RESOLUTION)] * 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, graphed, strict=True))
