"""A project home: one folder with the config, the database, the Oxen dataset repository,
the candidate images and the round outputs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from herdbook.config import ProjectConfig
from herdbook.errors import HomeError

CONFIG_NAME = "herdbook.toml"
DEFAULT_HOME = "herdbook-home"


def resolve_home(path: str | os.PathLike | None = None) -> Path:
    """``--home`` wins, then ``HERDBOOK_HOME``, then ``./herdbook-home``."""
    chosen = path or os.environ.get("HERDBOOK_HOME") or DEFAULT_HOME
    return Path(chosen).expanduser().resolve()


@dataclass(frozen=True)
class Home:
    root: Path
    config: ProjectConfig

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def database_url(self) -> str:
        return self.config.database_url or f"sqlite:///{self.root / 'herdbook.db'}"

    @property
    def dataset_dir(self) -> Path:
        """The Oxen repository of curated datasets."""
        return self.root / "dataset"

    @property
    def candidates_dir(self) -> Path:
        return self.root / "candidates"

    @property
    def rounds_dir(self) -> Path:
        return self.root / "rounds"

    @property
    def class_images_dir(self) -> Path:
        return self.root / "class-images"

    @property
    def oxen_config_dir(self) -> Path:
        return self.root / ".oxen-user"

    def round_dir(self, round_id: int) -> Path:
        return self.rounds_dir / f"round-{round_id:03d}"

    def open_store(self):
        from db.store import open_store

        return open_store(self.database_url)

    def use_oxen(self) -> None:
        from feedback.versioning import use_config_dir

        use_config_dir(self.oxen_config_dir, self.config.oxen)


def load_home(path: str | os.PathLike | None = None) -> Home:
    root = resolve_home(path)
    config_path = root / CONFIG_NAME
    if not config_path.exists():
        raise HomeError(
            f"no herdbook project at {root} (no {CONFIG_NAME}); create one with `herdbook init --home {root}`"
        )
    return Home(root, ProjectConfig.load(config_path))


def init_home(path: str | os.PathLike | None = None, config: ProjectConfig | None = None) -> Home:
    """Create the home's folders, config, database and Oxen repository.

    Running it on an existing home fails rather than overwrite its config."""
    from feedback.versioning import init_repository

    root = resolve_home(path)
    if (root / CONFIG_NAME).exists():
        raise HomeError(f"{root} already holds a herdbook project")
    if root.exists() and not root.is_dir():
        raise HomeError(f"{root} exists and is not a folder")
    home = Home(root, config or ProjectConfig())
    for folder in (root, home.candidates_dir, home.rounds_dir):
        folder.mkdir(parents=True, exist_ok=True)
    init_repository(home.dataset_dir)
    home.use_oxen()
    home.open_store().close()
    home.config.save(home.config_path)  # last: a home counts as made once its config exists
    return home
