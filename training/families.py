"""Model families: what differs between Stable Diffusion 1.x and SDXL, in one place each.

A family knows its text encoders (how prompts become the UNet's conditioning), the extra
conditioning its UNet takes, its pipeline class, its default size and how its LoRA adapters
are saved. Everything else (the training loop, the fast path, generation, rounds) is written
once over these few methods, so a new family (SD 3.x, FLUX.1) is a new class here.

The family of a model is read from its folder (``model_index.json``), never asked of the user."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herdbook.training.errors import ModelLoadError

if TYPE_CHECKING:  # torch is imported where a family computes: checking a model's family needs none
    import torch
    from herdbook.training.components import Components


@dataclass
class PromptEmbedding:
    """What the UNet is conditioned on for a batch of prompts."""

    hidden: torch.Tensor  # (rows, tokens, width): cross-attention's input
    pooled: torch.Tensor | None = None  # (rows, width): SDXL's pooled text embedding

    def index_select(self, rows: torch.Tensor) -> PromptEmbedding:
        pooled = None if self.pooled is None else self.pooled.index_select(0, rows)
        return PromptEmbedding(self.hidden.index_select(0, rows), pooled)


class Family:
    """What every family shares: CLIP tokenizers and text encoders in diffusers' subfolders."""

    name: str
    label: str
    default_resolution: int
    default_guidance: float  # the pipeline's own default guidance scale
    default_scheduler: str | None  # the sampler generation uses; None: the one the model ships with
    draw_batch: int  # images a grid's (or class images') sampling call draws: bench/draw_batch.txt
    pipeline_class: str
    encoder_names: tuple[str, ...]  # the text encoders' subfolders, in the pipeline's order
    encoder_classes: tuple[str, ...]  # their transformers classes

    @property
    def tokenizer_names(self) -> tuple[str, ...]:
        """Each text encoder's tokenizer, as diffusers names its subfolder."""
        return tuple(name.replace("text_encoder", "tokenizer") for name in self.encoder_names)

    def import_classes(self) -> None:
        """Import what loading this family's model takes: diffusers and transformers import each
        class's module on first use (~2 of a tiny round's 6.5 s on a CPU, in the middle of loading)."""
        import diffusers
        import transformers

        for name in ("UNet2DConditionModel", "AutoencoderKL", "DDPMScheduler", self.pipeline_class):
            getattr(diffusers, name)
        for name in ("CLIPTokenizer", *self.encoder_classes):
            getattr(transformers, name)

    def load_text_parts(self, load) -> dict[str, Any]:
        """The tokenizers and text encoders by pipeline name, each through ``load(class, subfolder)``."""
        import transformers

        parts = {}
        for subfolder, tokenizer, class_name in zip(
            self.encoder_names, self.tokenizer_names, self.encoder_classes, strict=True
        ):
            parts[tokenizer] = load(transformers.CLIPTokenizer, tokenizer)
            parts[subfolder] = load(getattr(transformers, class_name), subfolder)
        return parts

    def tokenize(self, parts: Components, prompts: list[str]) -> list[torch.Tensor]:
        """Token ids per tokenizer, padded to each one's length."""
        return [
            tokenizer(
                prompts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            for tokenizer in parts.tokenizers
        ]

    def embed(self, encoders: list, ids: list[torch.Tensor]) -> PromptEmbedding:
        raise NotImplementedError

    def size_ids(self, resolution: int, rows: int) -> torch.Tensor | None:
        """Size conditioning for ``rows`` images, if the family has any. Made once, before a
        CUDA graph is captured: a host tensor copied to the GPU inside a capture would fail."""
        return None

    def added_conditioning(self, embedding: PromptEmbedding, size_ids: torch.Tensor | None) -> dict | None:
        """The UNet's inputs beside the text embedding, if the family has any."""
        return None

    def pipeline(self, parts: Components, scheduler):
        raise NotImplementedError

    def save_lora(self, folder: Path, unet_layers: dict, encoder_layers: list[dict | None]) -> None:
        """Adapters in diffusers' format: ``load_lora_weights`` on the parent pipeline reads them."""
        raise NotImplementedError


class StableDiffusion1(Family):
    """Stable Diffusion 1.x (and 2.x): one CLIP text encoder, its last hidden states."""

    name = "sd1"
    label = "Stable Diffusion 1.x"
    default_resolution = 512
    default_guidance = 7.5
    draw_batch = 8
    # SD-1.x ships PNDM, which needs ~50 steps for what DPM-Solver++ draws in 25-30
    default_scheduler = "DPMSolverMultistepScheduler"
    pipeline_class = "StableDiffusionPipeline"
    encoder_names = ("text_encoder",)
    encoder_classes = ("CLIPTextModel",)

    def embed(self, encoders: list, ids: list[torch.Tensor]) -> PromptEmbedding:
        return PromptEmbedding(encoders[0](ids[0].to(encoders[0].device))[0])

    def pipeline(self, parts: Components, scheduler):
        """A plain diffusers pipeline (no safety checker: the raters are the filter)."""
        import diffusers

        return diffusers.StableDiffusionPipeline(
            vae=parts.vae,
            text_encoder=parts.text_encoder,
            tokenizer=parts.tokenizer,
            unet=parts.unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def save_lora(self, folder: Path, unet_layers: dict, encoder_layers: list[dict | None]) -> None:
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(
            folder, unet_lora_layers=unet_layers, text_encoder_lora_layers=encoder_layers[0], safe_serialization=True
        )


class StableDiffusionXL(Family):
    """SDXL: two CLIP text encoders whose penultimate hidden states are joined, the second's
    pooled (projected) embedding, and the image's size as added "text_time" conditioning."""

    name = "sdxl"
    label = "SDXL"
    default_resolution = 1024
    default_guidance = 5.0
    draw_batch = 4
    default_scheduler = None  # SDXL's own (Euler in the base model): what its users compare against
    pipeline_class = "StableDiffusionXLPipeline"
    encoder_names = ("text_encoder", "text_encoder_2")
    encoder_classes = ("CLIPTextModel", "CLIPTextModelWithProjection")

    def embed(self, encoders: list, ids: list[torch.Tensor]) -> PromptEmbedding:
        import torch

        # as diffusers' StableDiffusionXLPipeline.encode_prompt does (no clip skip)
        hidden, pooled = [], None
        for encoder, token_ids in zip(encoders, ids, strict=True):
            output = encoder(token_ids.to(encoder.device), output_hidden_states=True)
            pooled = output[0]  # the last encoder's: its projected text embedding
            hidden.append(output.hidden_states[-2])
        return PromptEmbedding(torch.cat(hidden, dim=-1), pooled)

    def size_ids(self, resolution: int, rows: int) -> torch.Tensor:
        """Original size, crop corner and target size, as the pipeline's ``add_time_ids``: trained
        as the images are seen (the whole image at ``resolution``), which is what generation at
        that size asks for (original = target size, no crop)."""
        import torch

        return torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * rows, dtype=torch.float32)

    def added_conditioning(self, embedding: PromptEmbedding, size_ids: torch.Tensor) -> dict:
        return {"text_embeds": embedding.pooled, "time_ids": size_ids}

    def pipeline(self, parts: Components, scheduler):
        import diffusers

        return diffusers.StableDiffusionXLPipeline(
            vae=parts.vae,
            text_encoder=parts.text_encoder,
            text_encoder_2=parts.text_encoder_2,
            tokenizer=parts.tokenizer,
            tokenizer_2=parts.tokenizer_2,
            unet=parts.unet,
            scheduler=scheduler,
            add_watermarker=False,  # the raters see the images as drawn
        )

    def save_lora(self, folder: Path, unet_layers: dict, encoder_layers: list[dict | None]) -> None:
        from diffusers import StableDiffusionXLPipeline

        StableDiffusionXLPipeline.save_lora_weights(
            folder,
            unet_lora_layers=unet_layers,
            text_encoder_lora_layers=encoder_layers[0],
            text_encoder_2_lora_layers=encoder_layers[1],
            safe_serialization=True,
        )


SD1, SDXL = StableDiffusion1(), StableDiffusionXL()
PIPELINE_CLASSES = {
    "StableDiffusionPipeline": SD1,
    "StableDiffusionImg2ImgPipeline": SD1,
    "StableDiffusionXLPipeline": SDXL,
    "StableDiffusionXLImg2ImgPipeline": SDXL,
}
SUPPORTED = "Stable Diffusion 1.x/2.x (StableDiffusionPipeline) and SDXL (StableDiffusionXLPipeline)"


def family_of_index(index: dict | None, unet_config: dict | None, where: str) -> Family:
    """The family a model's ``model_index.json`` (or, without one, its UNet's config) says."""
    if index is not None:
        class_name = str(index.get("_class_name", ""))
        if class_name in PIPELINE_CLASSES:
            return PIPELINE_CLASSES[class_name]
        found = f"a {class_name} pipeline" if class_name else "a model_index.json without a pipeline class"
        raise ModelLoadError(f"{where} holds {found}; herdbook supports {SUPPORTED}")
    if unet_config is not None:
        return SDXL if unet_config.get("addition_embed_type") == "text_time" else SD1
    raise ModelLoadError(
        f"{where} is not a diffusers model folder (no model_index.json); herdbook supports {SUPPORTED}"
    )


def family_of_folder(folder: Path) -> Family:
    def read(path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"{path} is not readable JSON ({error})") from None

    return family_of_index(read(folder / "model_index.json"), read(folder / "unet" / "config.json"), str(folder))
