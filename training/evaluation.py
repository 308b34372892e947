"""Subject and prompt fidelity, measured as the DreamBooth paper does (Ruiz et al., CVPR 2023, §4.1):

- DINO: the mean cosine similarity between the DINO ViT-S/16 embeddings (the CLS token) of
  every generated x real image pair;
- CLIP-I: the same with CLIP image embeddings;
- CLIP-T: the mean cosine similarity between each generated image's CLIP image embedding and
  its own prompt's CLIP text embedding.

The paper's Table 1 for scale: real images DINO 0.774 / CLIP-I 0.885; DreamBooth on Stable
Diffusion 0.668 / 0.803 / CLIP-T 0.305. The formulas are plain numpy over embeddings
(``subject_fidelity``, ``prompt_fidelity``); the models load only in ``Embedders``, from hub ids
or local folders, and where they cannot load, ``EvaluationUnavailable`` says why in one line."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from herdbook.db.errors import HerdbookError
from herdbook.training.settings import EvaluationSettings

BATCH = 32  # images per forward pass: 48 images are two passes


class EvaluationUnavailable(HerdbookError):
    """The DINO or CLIP model could not be loaded (or the images to compare are missing)."""


# --- the paper's formulas ------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    mean: float
    spread: float  # standard deviation over the generated images (each image's own mean)
    images: int

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def unit(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    return embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True).clip(min=1e-12)


def pair_similarities(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Cosine similarity of every generated (rows) x real (columns) pair."""
    return unit(generated) @ unit(real).T


def subject_fidelity(generated: np.ndarray, real: np.ndarray) -> Figure:
    """DINO or CLIP-I: the mean over all generated x real pairs."""
    similarities = pair_similarities(generated, real)
    per_image = similarities.mean(axis=1)
    return Figure(float(similarities.mean()), float(per_image.std()), len(per_image))


def prompt_fidelity(images: np.ndarray, texts: np.ndarray) -> Figure:
    """CLIP-T: the mean over matched image/prompt pairs (row i of each)."""
    similarities = (unit(images) * unit(texts)).sum(axis=1)
    return Figure(float(similarities.mean()), float(similarities.std()), len(similarities))


def similarity_to_set(embeddings: np.ndarray, reference: np.ndarray, same: list[int | None]) -> list[float | None]:
    """Each embedding's mean cosine similarity to the reference set, leaving out ``same[i]`` (the
    reference row that is the image itself, if it is one): an image must not count its own copy."""
    if len(reference) == 0:
        return [None] * len(embeddings)
    similarities = pair_similarities(embeddings, reference)
    scores = []
    for row, own in zip(similarities, same, strict=True):
        others = np.delete(row, own) if own is not None else row
        scores.append(float(others.mean()) if len(others) else None)
    return scores


# --- the models ----------------------------------------------------------------------------


class Embedders:
    """DINO and CLIP, loaded once onto one device: bf16 on a GPU (tests/training/test_evaluation.py
    checks it against float32), float32 on a CPU."""

    def __init__(self, settings: EvaluationSettings, device=None, dtype=None) -> None:
        import torch
        from herdbook.training.errors import ModelLoadError
        from herdbook.training.models import load_pretrained
        from transformers import AutoImageProcessor, AutoModel, AutoProcessor
        from transformers.utils import logging

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # DINO's checkpoint has no pooler; its CLS token is what is used
        try:
            self.dino_model = load_pretrained(AutoModel, settings.dino_model, "[evaluation] dino_model")
            self.dino_processor = load_pretrained(AutoImageProcessor, settings.dino_model, "[evaluation] dino_model")
            self.clip_model = load_pretrained(AutoModel, settings.clip_model, "[evaluation] clip_model")
            self.clip_processor = load_pretrained(AutoProcessor, settings.clip_model, "[evaluation] clip_model")
        except (ModelLoadError, OSError, ValueError) as error:
            raise EvaluationUnavailable(str(error).splitlines()[0]) from None
        finally:
            logging.set_verbosity(verbosity)
        for model in (self.dino_model, self.clip_model):
            model.to(self.device, self.dtype).eval()
        self.names = {"dino": settings.dino_model, "clip": settings.clip_model}

    def _batches(self, items: list, embed) -> np.ndarray:
        import torch

        with torch.inference_mode():
            parts = [embed(items[i : i + BATCH]).float().cpu().numpy() for i in range(0, len(items), BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, 1))

    def _pixels(self, processor, images) -> dict:
        inputs = processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        return {"pixel_values": inputs["pixel_values"].to(self.device, self.dtype)}

    def dino(self, images) -> np.ndarray:
        return self._batches(
            images, lambda batch: self.dino_model(**self._pixels(self.dino_processor, batch)).last_hidden_state[:, 0]
        )

    def clip_images(self, images) -> np.ndarray:
        return self._batches(
            images,
            lambda batch: _projected(self.clip_model.get_image_features(**self._pixels(self.clip_processor, batch))),
        )

    def clip_texts(self, texts: list[str]) -> np.ndarray:
        """One row per text; each distinct text is embedded once (a grid repeats its prompts per seed)."""

        def embed(batch):
            tokens = self.clip_processor(text=batch, return_tensors="pt", padding=True, truncation=True)
            return _projected(self.clip_model.get_text_features(**tokens.to(self.device)))

        distinct = list(dict.fromkeys(texts))
        embedded = self._batches(distinct, embed)
        return embedded[[distinct.index(text) for text in texts]] if texts else embedded


def _projected(output):
    """get_*_features returns the projected embedding (transformers 4) or an output holding it (5)."""
    return output if hasattr(output, "float") else output.pooler_output


# --- a round's report -----------------------------------------------------------------------


def read_images(paths: list[Path]) -> list:
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def grid_entries(folder: Path) -> list[dict]:
    """A validation grid's images (prompt, seed, file), as ``training.dreambooth.render_grid`` wrote them."""
    index = folder / "index.json"
    if not index.is_file():
        raise EvaluationUnavailable(f"no validation grid in {folder} (was the round's folder moved?)")
    return [{**entry, "path": folder / entry["file"]} for entry in json.loads(index.read_text())]


def grid_fidelity(embedders: Embedders, folder: Path, real_dino: np.ndarray, real_clip: np.ndarray) -> dict:
    entries = grid_entries(folder)
    images = read_images([entry["path"] for entry in entries])
    dino, clip = embedders.dino(images), embedders.clip_images(images)
    texts = embedders.clip_texts([entry["prompt"] for entry in entries])
    return {
        "dino": subject_fidelity(dino, real_dino).as_dict(),
        "clip_i": subject_fidelity(clip, real_clip).as_dict(),
        "clip_t": prompt_fidelity(clip, texts).as_dict(),
    }


def round_report(embedders: Embedders, grid: Path, start_grid: Path | None, instance_files: list[Path]) -> dict:
    """The round's fidelity figures, and its starting model's on the same prompts, seeds and
    instance images (the base's grid is drawn once, so each round costs one grid to score)."""
    if not instance_files:
        raise EvaluationUnavailable("the round's instance images are gone (was its folder moved?)")
    real = read_images(instance_files)
    real_dino, real_clip = embedders.dino(real), embedders.clip_images(real)
    report = grid_fidelity(embedders, grid, real_dino, real_clip)
    start = None
    if start_grid is not None and (start_grid / "index.json").is_file():
        start = grid_fidelity(embedders, start_grid, real_dino, real_clip)
    return {
        **report,
        "start": start,
        "instance_images": len(instance_files),
        "models": embedders.names,
        "dtype": str(embedders.dtype).removeprefix("torch."),
    }


def candidate_scores(
    embedders: Embedders, images: list, prompts: list[str], reference: np.ndarray, same: list[int | None]
) -> list[tuple[float | None, float]]:
    """(DINO similarity to the instance set, CLIP-T to its own prompt) per candidate image;
    ``reference``: the instance set's DINO embeddings (``embedders.dino``), made once per job."""
    dino = embedders.dino(images)
    clip_t = (unit(embedders.clip_images(images)) * unit(embedders.clip_texts(prompts))).sum(axis=1)
    return list(zip(similarity_to_set(dino, reference, same), (float(x) for x in clip_t), strict=True))
