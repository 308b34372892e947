"""One typed settings object per run, saved beside its output."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass(frozen=True)
class ModelChain:
    """What a model is made of: a diffusers pipeline (hub id or folder) plus LoRA adapters
    fused on top, in order. A full round's output is a pipeline; a LoRA round's adds an adapter."""

    pipeline: str
    adapters: tuple[str, ...] = ()

    def describe(self) -> str:
        return " + ".join([self.pipeline, *self.adapters])


@dataclass
class RoundSettings:
    """Everything a Dreambooth round needs. Defaults are the reference run."""

    instance_dir: str
    output_dir: str
    model: ModelChain
    instance_prompt: str = "an image of the oxenai ox"
    class_prompt: str = "an image of an ox"
    mode: str = "full"  # "full" fine-tunes the UNet; "lora" trains a low-rank adapter through peft
    resolution: int = 512
    batch_size: int = 1
    steps: int = 400
    learning_rate: float = 5e-6
    lr_scheduler: str = "constant"
    lora_rank: int = 16
    train_text_encoder: bool = False
    prior_preservation: bool = False
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    class_dir: str = ""  # cached class images; generated from the parent model when missing
    weight_by_rating: bool = False  # fill rating_weights from the dataset's scores when the round starts
    rating_weights: dict[str, float] = field(default_factory=dict)  # file name -> weight; empty: uniform
    seed: int = 0
    mixed_precision: str = "auto"  # "auto", "no", "bf16", "fp16"
    gradient_checkpointing: bool = False  # saves activation memory for 1.8x the step time
    use_8bit_adam: bool = True  # only where bitsandbytes is installed and a GPU is used
    checkpoint_every: int = 200  # 0: never
    validation_prompts: list[str] = field(default_factory=list)
    # where the starting model's grid goes, rendered before training when missing (the base's)
    parent_validation_dir: str = ""
    validation_seeds: list[int] = field(default_factory=lambda: [0, 1])
    validation_steps: int = 30
    generation_steps: int = 30  # for class images
    guidance_scale: float = 7.5

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelChain(self.model["pipeline"], tuple(self.model.get("adapters", ())))
        if self.mode not in ("full", "lora"):
            raise ValueError(f"mode must be 'full' or 'lora', not {self.mode!r}")
        if self.steps < 1 or self.batch_size < 1 or self.resolution % 8:
            raise ValueError("steps and batch size must be positive and the resolution a multiple of 8")

    @property
    def output(self) -> Path:
        return Path(self.output_dir)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> RoundSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> RoundSettings:
        return cls.from_dict(json.loads(text))

    def save(self, path: Path | None = None) -> Path:
        path = path or self.output / "settings.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path


@dataclass
class GenerationSettings:
    prompt: str
    model: ModelChain
    negative_prompt: str = ""
    count: int = 4
    seed: int = 0
    steps: int = 30
    guidance_scale: float = 7.5
    resolution: int = 512
    batch_size: int = 4
    scheduler: str = "DPMSolverMultistepScheduler"
