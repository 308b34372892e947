"""One typed settings object per run, checked when it is made and saved beside its output.

``TrainingOptions`` is the one source of the training knobs and their defaults (the
reference Dreambooth run); the project's ``[training]`` table and a round's settings
both build on it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from herdbook.db.errors import StrictSettings, checked
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator


def _multiple_of_8(value: int) -> int:
    if value < 8 or value % 8:
        raise ValueError("must be a multiple of 8, at least 8 (the VAE downsamples by 8)")
    return value


class ModelChain(StrictSettings, frozen=True):
    """What a model is made of: a diffusers pipeline (hub id or folder) plus LoRA adapters
    fused on top, in order. A full round's output is a pipeline; a LoRA round's adds an adapter."""

    pipeline: str
    adapters: tuple[str, ...] = ()

    def __init__(self, pipeline: str | None = None, adapters: tuple[str, ...] = (), **data: Any) -> None:
        if pipeline is not None:
            data["pipeline"] = pipeline
        super().__init__(adapters=adapters, **data)

    def describe(self) -> str:
        return " + ".join([self.pipeline, *self.adapters])


class TrainingOptions(StrictSettings):
    """The knobs of a Dreambooth round. Defaults are the reference run: 6 images, 512 px,
    batch 1, lr 5e-6 constant, 400 steps."""

    mode: Literal["full", "lora"] = "full"  # full fine-tunes the UNet; lora trains a low-rank adapter
    steps: PositiveInt = 400
    learning_rate: PositiveFloat = 5e-6
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    lr_warmup_steps: NonNegativeInt = 0
    lora_rank: PositiveInt = 16
    batch_size: PositiveInt = 1
    train_text_encoder: bool = False
    prior_preservation: bool = False
    prior_loss_weight: NonNegativeFloat = 1.0
    num_class_images: PositiveInt = 100
    weight_by_rating: bool = False  # higher-rated images come up more often
    # A full-round checkpoint (UNet + AdamW state, ~10 GB) took 22 s on an H100 box: one per 200 steps.
    checkpoint_every: NonNegativeInt = 200  # 0: never
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU that has it
    # Off: a full SD-1.5 round peaks at 17 GiB without it and runs 1.8x faster (bench/gpu_round.txt).
    # Turn on for GPUs under 20 GB.
    gradient_checkpointing: bool = False
    # auto: the UNet runs in the mixed-precision type on a working copy of float32 master weights
    # that two Triton kernels clip and update, reading the gradients in place (training.masters), and on one CUDA GPU the whole step is
    # captured once as a CUDA graph and replayed: the same math without ~4,800 kernel launches
    # and ~1,400 casts a step; off: accelerate's autocast and torch's AdamW, every kernel
    # launched from Python (what runs under several processes anyway)
    fast_path: Literal["auto", "off"] = "auto"
    seed: int = 0


class TrainingDefaults(TrainingOptions):
    """``[training]`` in herdbook.toml: every round's defaults, plus what only a project sets."""

    lora_learning_rate: PositiveFloat = 1e-4  # replaces learning_rate in LoRA rounds
    start_from: str = "parent"  # "parent" (latest finished round) or "base"

    def for_round(self, mode: str | None = None) -> dict[str, Any]:
        """The TrainingOptions of a round in ``mode`` (the project's mode when None)."""
        options = self.model_dump(include=set(TrainingOptions.model_fields))
        options["mode"] = mode or self.mode
        if options["mode"] == "lora":
            options["learning_rate"] = self.lora_learning_rate
        return options


class RoundSettings(TrainingOptions):
    """Everything a Dreambooth round needs; saved as the round's settings.json."""

    instance_dir: str
    output_dir: str
    model: ModelChain
    family: Literal["", "sd1", "sdxl"] = ""  # the model's family, read from its folder when planned
    instance_prompt: str = "an image of the oxenai ox"
    class_prompt: str = "an image of an ox"
    resolution: int = 512
    class_dir: str = ""  # cached class images; generated from the parent model when missing
    rating_weights: dict[str, float] = Field(default_factory=dict)  # file name -> weight; empty: uniform
    use_8bit_adam: bool = False  # bitsandbytes' AdamW8bit where installed: less memory, no fast path
    # False: the VAE and text encoder run on every step, as diffusers' example does (the
    # benchmark's reference); True: each image and prompt is encoded once
    cache_encodings: bool = True
    validation_prompts: list[str] = Field(default_factory=list)
    # where the starting model's grid goes, rendered before training when missing (the base's)
    parent_validation_dir: str = ""
    validation_seeds: list[int] = Field(default_factory=lambda: [0, 1])
    validation_steps: PositiveInt = 30
    generation_steps: PositiveInt = 30  # for class images
    guidance_scale: NonNegativeFloat = 7.5

    _resolution_ok = field_validator("resolution")(_multiple_of_8)

    @property
    def output(self) -> Path:
        return Path(self.output_dir)

    @property
    def checkpoint_file(self) -> Path:
        return self.output / "checkpoint" / "latest.pt"

    @property
    def weights_saved_file(self) -> Path:
        """Written once the round's weights are complete on disk; a resume then only finishes."""
        return self.output / "weights-saved.json"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_dict(cls, data: dict, source: str = "round settings") -> RoundSettings:
        return checked(cls, data, source)

    @classmethod
    def from_json(cls, text: str, source: str = "settings.json") -> RoundSettings:
        return cls.from_dict(json.loads(text), source)

    def save(self, path: Path | None = None) -> Path:
        path = path or self.output / "settings.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path


def class_images_key(model: ModelChain, prompt: str, resolution: int, steps: int, guidance_scale: float) -> str:
    """A folder name for cached class images: anything that changes them changes the name."""
    made_from = json.dumps([model.pipeline, list(model.adapters), prompt, resolution, steps, guidance_scale])
    return f"{resolution}px-{hashlib.sha256(made_from.encode()).hexdigest()[:12]}"


class GenerationSettings(StrictSettings):
    prompt: str
    model: ModelChain
    negative_prompt: str = ""
    count: PositiveInt = 4
    seed: int = Field(0, ge=0, lt=2**63)
    steps: PositiveInt = 30
    guidance_scale: NonNegativeFloat = 7.5
    resolution: int = 512
    batch_size: PositiveInt = 4
    # a diffusers sampler class; None: the model family's (SD-1.x: DPM-Solver++, SDXL: the model's own)
    scheduler: str | None = None
    # auto: on a CUDA GPU the UNet's call is captured as a CUDA graph and replayed; off: eager
    fast_path: Literal["auto", "off"] = "auto"

    _resolution_ok = field_validator("resolution")(_multiple_of_8)


CONTEXT_PROMPTS = (
    "{instance} on a sandy beach",
    "{instance} in the snow",
    "{instance} wearing a red hat",
)


class EvaluationSettings(StrictSettings):
    """``[evaluation]`` in herdbook.toml: the models that judge each round, and what it draws for them."""

    enabled: bool = True
    dino_model: str = "facebook/dino-vits16"
    clip_model: str = "openai/clip-vit-large-patch14"
    # beside the project's reference prompts: the character somewhere new ({instance}: the instance prompt)
    context_prompts: list[str] = Field(default_factory=lambda: list(CONTEXT_PROMPTS))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3], min_length=1)  # images per prompt
    score_candidates: bool = True  # each generated candidate's DINO (to the instance set) and CLIP-T

    def prompts(self, instance_prompt: str, reference_prompts: list[str] | tuple[str, ...]) -> list[str]:
        contexts = (p.replace("{instance}", instance_prompt) for p in self.context_prompts)
        return list(dict.fromkeys([*reference_prompts, *contexts]))
