"""The project config, ``herdbook.toml``: one typed object, read and written whole."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from herdbook.errors import HomeError

DEFAULT_BASE_MODEL = "CompVis/stable-diffusion-v1-4"
DEFAULT_INSTANCE_PROMPT = "an image of the oxenai ox"
DEFAULT_CLASS_PROMPT = "an image of an ox"
REFERENCE_PROMPTS = (
    "an image of a happy white fluffy cartoon ox eating almonds",
    "the oxenai ox eating almonds",
    "an ox",
)


@dataclass
class TrainingDefaults:
    """The reference Dreambooth run: 6 images, 512 px, batch 1, lr 5e-6 constant, 400 steps."""

    mode: str = "full"
    steps: int = 400
    learning_rate: float = 5e-6
    lora_rank: int = 16
    lora_learning_rate: float = 1e-4
    batch_size: int = 1
    prior_preservation: bool = False
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    train_text_encoder: bool = False
    start_from: str = "parent"  # "parent" (latest finished round) or "base"
    # A full-round checkpoint (UNet + AdamW state, ~10 GB) took 22 s on an H100 box: one per 200 steps.
    checkpoint_every: int = 200
    mixed_precision: str = "auto"  # "auto" picks bf16 on a GPU that has it, else no
    # Off: a full SD-1.5 round peaks at 17 GiB without it and runs 1.8x faster (bench/gpu_round.txt).
    # Turn on for GPUs under 20 GB.
    gradient_checkpointing: bool = False


@dataclass
class SelectionPolicy:
    """Which rated images become instance data. The defaults suit a lone curator (their one
    accept selects an image) and a team (an image most of its raters rejected never is)."""

    min_votes: int = 1  # accept/reject votes an image needs before it can be chosen
    min_score: float = 0.0  # Wilson lower bound of the accept rate; 1 accept = 0.21, 3 of 3 = 0.44
    top_k: int = 24  # Dreambooth wants a handful to a few dozen consistent images
    max_per_prompt: int = 8  # keeps one prompt from filling the set
    near_duplicate_distance: int = 6  # perceptual-hash bits; re-encoded or resized copies differ by 0-4


@dataclass
class JobSettings:
    """Where background jobs queue: "sqlite" keeps them in the home (one machine);
    a redis:// URL lets workers on several GPU boxes take them."""

    queue: str = "sqlite"
    stale_after_seconds: int = 120  # a running job whose worker is silent this long is marked lost


@dataclass
class OxenSettings:
    remote: str = ""  # e.g. https://hub.oxen.ai/my-team/oxenai-ox ; empty: local only
    remote_name: str = "origin"
    branch: str = "main"
    user_name: str = "herdbook"
    user_email: str = "herdbook@localhost"


@dataclass
class ProjectConfig:
    base_model: str = DEFAULT_BASE_MODEL
    instance_prompt: str = DEFAULT_INSTANCE_PROMPT
    class_prompt: str = DEFAULT_CLASS_PROMPT
    resolution: int = 512
    database_url: str = ""  # empty: herdbook.db inside the home; any SQLAlchemy URL works
    reference_prompts: list[str] = field(default_factory=lambda: list(REFERENCE_PROMPTS))
    training: TrainingDefaults = field(default_factory=TrainingDefaults)
    selection: SelectionPolicy = field(default_factory=SelectionPolicy)
    jobs: JobSettings = field(default_factory=JobSettings)
    oxen: OxenSettings = field(default_factory=OxenSettings)

    def to_toml(self) -> str:
        return tomli_w.dumps(asdict(self))

    @classmethod
    def from_toml(cls, text: str, source: str = "herdbook.toml") -> ProjectConfig:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise HomeError(f"{source}: not valid TOML ({error})") from error
        return _build(cls, data, source)

    @classmethod
    def load(cls, path: Path) -> ProjectConfig:
        return cls.from_toml(path.read_text(encoding="utf-8"), str(path))

    def save(self, path: Path) -> None:
        path.write_text(self.to_toml(), encoding="utf-8")


def _build(kind: type, data: dict[str, Any], source: str, prefix: str = "") -> Any:
    known = {f.name: f for f in fields(kind)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise HomeError(f"{source}: unknown setting(s) {', '.join(prefix + u for u in unknown)}")
    values = {}
    for name, value in data.items():
        nested = (
            {"training": TrainingDefaults, "selection": SelectionPolicy, "jobs": JobSettings, "oxen": OxenSettings}.get(
                name
            )
            if kind is ProjectConfig
            else None
        )
        if nested is not None:
            if not isinstance(value, dict):
                raise HomeError(f"{source}: [{name}] must be a table")
            value = _build(nested, value, source, prefix=f"{name}.")
        values[name] = value
    return kind(**values)
