"""The project config, ``herdbook.toml``: one typed object, checked whole when it is read.

Each layer owns the settings it reads ([selection] in feedback.selection, [oxen] in
feedback.versioning, [training] and [evaluation] in training.settings); this module puts them together."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import tomli_w
from pydantic import Field, PositiveInt, field_validator

from herdbook.db.errors import StrictSettings, checked
from herdbook.errors import HomeError
from herdbook.feedback.selection import SelectionPolicy
from herdbook.feedback.versioning import OxenSettings
from herdbook.training.settings import EvaluationSettings, TrainingDefaults

DEFAULT_BASE_MODEL = "CompVis/stable-diffusion-v1-4"
DEFAULT_INSTANCE_PROMPT = "an image of the oxenai ox"
DEFAULT_CLASS_PROMPT = "an image of an ox"
REFERENCE_PROMPTS = (
    "an image of a happy white fluffy cartoon ox eating almonds",
    "the oxenai ox eating almonds",
    "an ox",
)


class JobSettings(StrictSettings):
    """Where background jobs queue: "sqlite" keeps them in the home (one machine); a redis://
    URL lets workers on several GPU boxes take them."""

    queue: str = "sqlite"
    stale_after_seconds: PositiveInt = 120  # a running job whose worker is silent this long is marked lost

    @field_validator("queue")
    @classmethod
    def _known_queue(cls, value: str) -> str:
        if value != "sqlite" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError('must be "sqlite" or a redis:// URL')
        return value


class ProjectConfig(StrictSettings):
    base_model: str = DEFAULT_BASE_MODEL
    instance_prompt: str = DEFAULT_INSTANCE_PROMPT
    class_prompt: str = DEFAULT_CLASS_PROMPT
    # pixels per side; unset: the base model family's own (512 for SD-1.x, 1024 for SDXL)
    resolution: int | None = None
    database_url: str = ""  # empty: herdbook.db inside the home; any SQLAlchemy URL works
    # names this project's job queue, so two homes never share one (made by `herdbook init`)
    project_id: str = ""
    reference_prompts: list[str] = Field(default_factory=lambda: list(REFERENCE_PROMPTS))
    training: TrainingDefaults = Field(default_factory=TrainingDefaults)
    selection: SelectionPolicy = Field(default_factory=SelectionPolicy)
    jobs: JobSettings = Field(default_factory=JobSettings)
    oxen: OxenSettings = Field(default_factory=OxenSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and (value < 8 or value % 8):
            raise ValueError("must be a multiple of 8, at least 8 (the VAE downsamples by 8)")
        return value

    def to_toml(self) -> str:
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))

    @classmethod
    def from_toml(cls, text: str, source: str = "herdbook.toml") -> ProjectConfig:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise HomeError(f"{source}: not valid TOML ({error})") from error
        return checked(cls, data, source)

    @classmethod
    def load(cls, path: Path) -> ProjectConfig:
        return cls.from_toml(path.read_text(encoding="utf-8"), str(path))

    def save(self, path: Path) -> None:
        """Atomically, and readable by the owner alone when it holds a secret (a database
        password, a remote with credentials)."""
        partial = path.with_name(f".{path.name}.part")
        partial.write_text(self.to_toml(), encoding="utf-8")
        if self.holds_secret:
            os.chmod(partial, 0o600)
        os.replace(partial, path)

    @property
    def holds_secret(self) -> bool:
        return any("@" in url.split("/")[2] for url in (self.database_url, self.oxen.remote) if url.count("/") >= 2)
