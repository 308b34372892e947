"""Shared fixtures: isolated project homes and images made on the spot."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
from PIL import Image

SHARED_DEMO = Path(__file__).resolve().parents[1].parent / "shared" / "oxen-demo"


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, monkeypatch):
    """Keep Oxen's user config and herdbook's home away from the real ones."""
    monkeypatch.setenv("OXEN_CONFIG_DIR", str(tmp_path_factory.mktemp("oxen-config")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no test reaches for the model hub
    monkeypatch.delenv("HERDBOOK_HOME", raising=False)


def make_image(path: Path, seed: int = 0, size: tuple[int, int] = (64, 64), fmt: str | None = None) -> Path:
    """A small noisy picture; different seeds give different bytes and different perceptual hashes."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    pixels = image.load()
    for _ in range(size[0] * size[1] // 4):
        pixels[rng.randrange(size[0]), rng.randrange(size[1])] = tuple(rng.randrange(256) for _ in range(3))
    # big blocks make each image's structure (and so its perceptual hash) distinct
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        w, h = rng.randrange(4, size[0] // 2), rng.randrange(4, size[1] // 2)
        image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, min(size[0], x + w), min(size[1], y + h)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def home(tmp_path):
    from herdbook.home import init_home

    return init_home(tmp_path / "home")


@pytest.fixture
def store(home):
    store = home.open_store()
    yield store
    store.close()


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Eight images, two prompts, with a prompts.csv."""
    folder = tmp_path / "images"
    rows = []
    for i in range(8):
        make_image(folder / f"img-{i}.png", seed=i)
        rows.append({"file": f"img-{i}.png", "prompt": "an ox" if i < 4 else "the oxenai ox", "seed": i})
    write_csv(folder / "prompts.csv", rows)
    return folder


@pytest.fixture
def imported(home, store, image_folder):
    """A home with the eight images imported; returns their candidate ids in file order."""
    from herdbook.feedback.ingest import import_images, rows_from_csv

    with store.transaction() as session:
        report = import_images(
            session, image_folder, home.candidates_dir, home.root, rows_from_csv(image_folder / "prompts.csv")
        )
    assert report.ok
    from herdbook.db.models import Candidate
    from sqlalchemy import select

    with store.transaction() as session:
        return list(session.scalars(select(Candidate.id).order_by(Candidate.id)))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random-weight diffusers pipeline folder, built from config once per test run."""
    from tests.training.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl_model(tmp_path_factory):
    """A tiny random-weight SDXL pipeline folder (two text encoders, size conditioning)."""
    from tests.training.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sdxl", family="sdxl")


@pytest.fixture(scope="session")
def tiny_judges(tmp_path_factory):
    """Tiny random-weight DINO and CLIP folders: the settings that point [evaluation] at them."""
    from herdbook.training.settings import EvaluationSettings
    from herdbook.training.tiny import save_tiny_clip, save_tiny_dino

    folder = tmp_path_factory.mktemp("judges")
    return EvaluationSettings(
        dino_model=str(save_tiny_dino(folder / "dino")), clip_model=str(save_tiny_clip(folder / "clip"))
    )
