"""Subject and prompt fidelity: the paper's formulas on hand-made embeddings, then tiny random
DINO and CLIP models loaded the way the real ones are (from_pretrained on a folder)."""

import numpy as np
import pytest
from herdbook.feedback.scoring import auc
from herdbook.training.evaluation import (
    Embedders,
    EvaluationUnavailable,
    prompt_fidelity,
    similarity_to_set,
    subject_fidelity,
)
from herdbook.training.settings import EvaluationSettings
from PIL import Image

from tests.conftest import make_image


def test_identical_images_have_fidelity_one():
    embeddings = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    figure = subject_fidelity(embeddings, embeddings * 5)  # scale does not matter: cosine
    assert figure.mean == pytest.approx(1.0) and figure.spread == pytest.approx(0.0) and figure.images == 2


def test_subject_fidelity_is_the_mean_over_every_generated_and_real_pair():
    generated = np.array([[1.0, 0.0], [0.0, 1.0]])
    real = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    s = 1 / np.sqrt(2)
    pairs = [[1.0, s, -1.0], [0.0, s, 0.0]]  # cosines, worked by hand
    figure = subject_fidelity(generated, real)
    assert figure.mean == pytest.approx(np.mean(pairs))
    assert figure.spread == pytest.approx(np.std([np.mean(pairs[0]), np.mean(pairs[1])]))


def test_prompt_fidelity_pairs_each_image_with_its_own_prompt_only():
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    texts = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert prompt_fidelity(images, texts).mean == pytest.approx(1.0)  # all pairs would give 0.5
    assert prompt_fidelity(images, texts[::-1]).mean == pytest.approx(0.0)


def test_an_image_in_the_instance_set_does_not_count_its_own_copy():
    reference = np.array([[1.0, 0.0], [0.0, 1.0]])
    scores = similarity_to_set(reference, reference, same=[0, None])
    assert scores == [pytest.approx(0.0), pytest.approx(0.5)]
    assert similarity_to_set(reference, np.zeros((0, 2)), same=[None, None]) == [None, None]


def test_auc_is_one_when_the_metric_sorts_as_the_team_votes():
    assert auc([0.9, 0.8, 0.7], [0.2, 0.1]) == 1.0
    assert auc([0.1], [0.9]) == 0.0
    assert auc([0.5, 0.5], [0.5]) == 0.5  # ties count half
    assert auc([0.9], []) is None


@pytest.fixture(scope="module")
def judges(tiny_judges):
    return Embedders(tiny_judges, device="cpu")


def test_tiny_models_score_an_image_against_itself_as_one(judges, tmp_path):
    images = [Image.open(make_image(tmp_path / f"{i}.png", seed=i, size=(40, 40))).convert("RGB") for i in range(3)]
    dino = judges.dino(images)
    assert dino.shape == (3, 32)
    assert subject_fidelity(dino[:1], dino[:1]).mean == pytest.approx(1.0)
    assert subject_fidelity(dino[:1], dino[1:]).mean < 1.0
    clip = judges.clip_images(images)
    texts = judges.clip_texts(["an ox", "an ox on a beach", "a long prompt " * 40])  # truncated, not refused
    assert clip.shape == texts.shape == (3, 16)


def test_bf16_keeps_the_figures_of_float32(tiny_judges, tmp_path):
    import torch

    images = [Image.open(make_image(tmp_path / f"{i}.png", seed=i, size=(40, 40))).convert("RGB") for i in range(6)]
    figures = {}
    for dtype in (torch.float32, torch.bfloat16):
        judges = Embedders(tiny_judges, device="cpu", dtype=dtype)
        figures[dtype] = (
            subject_fidelity(judges.dino(images[:3]), judges.dino(images[3:])).mean,
            subject_fidelity(judges.clip_images(images[:3]), judges.clip_images(images[3:])).mean,
        )
    assert figures[torch.bfloat16] == pytest.approx(figures[torch.float32], abs=0.01)


def test_a_model_that_cannot_load_is_named_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        EvaluationUnavailable, match=r"facebook/dino-vits16 is not in the local .*\[evaluation\] dino_model"
    ):
        Embedders(EvaluationSettings(), device="cpu")
    with pytest.raises(EvaluationUnavailable, match="no model folder at"):
        Embedders(EvaluationSettings(dino_model=str(tmp_path / "gone")), device="cpu")


def test_the_evaluation_set_is_the_reference_prompts_and_new_contexts():
    settings = EvaluationSettings(context_prompts=["{instance} in the snow", "an ox"])
    assert settings.prompts("the oxenai ox", ["an ox", "the oxenai ox eating"]) == [
        "an ox",
        "the oxenai ox eating",
        "the oxenai ox in the snow",
    ]
