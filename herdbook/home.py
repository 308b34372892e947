"""A project home: one folder with the config, the database, the Oxen dataset repository,
the candidate images and the round outputs."""

from __future__ import annotations

import hashlib
import os
import uuid
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
        return self.project.candidates_dir  # the training layer's Project owns the folder layout

    @property
    def rounds_dir(self) -> Path:
        return self.project.rounds_dir

    @property
    def oxen_config_dir(self) -> Path:
        return self.root / ".oxen-user"

    @property
    def project_id(self) -> str:
        """Set by `herdbook init`; homes made before it existed are named by their path."""
        return self.config.project_id or hashlib.sha256(str(self.root).encode()).hexdigest()[:12]

    @property
    def project(self):
        """The project as the training layer sees it: plain values, no home."""
        from herdbook.training.rounds import Project

        c = self.config
        return Project(
            root=self.root,
            dataset_dir=self.dataset_dir,
            base_model=c.base_model,
            instance_prompt=c.instance_prompt,
            class_prompt=c.class_prompt,
            resolution=c.resolution,
            reference_prompts=tuple(c.reference_prompts),
            training=c.training,
            evaluation=c.evaluation,
        )

    def open_store(self, create: bool = False, upgrade: bool = True):
        """The home's database; only `herdbook init` creates one. ``upgrade=False`` leaves an
        older schema as it is (for checks that promise only to read)."""
        from herdbook.db.store import open_store

        return open_store(self.database_url, create=create, upgrade=upgrade)

    def readable_by_others(self) -> list[tuple[str, str]]:
        """What other local users can read and should not: the database (votes, password
        hashes) and a config that holds a password. (What, the command that fixes it) each."""
        private = [self.root / "herdbook.db"] if not self.config.database_url else []
        if self.config.holds_secret:
            private.append(self.config_path)
        lines = []
        for path in private:
            if path.exists() and path.stat().st_mode & 0o077:
                mode = oct(path.stat().st_mode & 0o777)[2:]
                held = "a password" if path == self.config_path else "the votes and password hashes"
                lines.append((f"{path} holds {held} and others may read it (mode {mode})", f"chmod 600 {path}"))
        return lines

    @property
    def dataset_repo(self):
        from herdbook.feedback.versioning import DatasetRepo

        return DatasetRepo(self.dataset_dir, self.config.oxen, self.oxen_config_dir)


def load_home(path: str | os.PathLike | None = None) -> Home:
    root = resolve_home(path)
    config_path = root / CONFIG_NAME
    if not config_path.exists():
        raise HomeError(
            f"no herdbook project at {root} (no {CONFIG_NAME}); create one with `herdbook init --home {root}`"
        )
    return Home(root, ProjectConfig.load(config_path))


def set_base_model(root: Path, base_model: str) -> Home:
    """Write a new base model into the home's config, re-read first (the CLI may have changed it)."""
    value = base_model.strip()
    if not value:
        raise HomeError(
            "the base model is empty: give a hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or a folder"
        )
    return change_config(root, base_model=value)


def change_config(root: Path, **changes) -> Home:
    """Save ``changes`` into the home's config as it is on disk now (another process may have
    changed it since this one read it), checked like a new config."""
    home = load_home(root)
    config = home.config.with_changes(**changes)
    config.save(home.config_path)
    return Home(home.root, config)


def init_home(path: str | os.PathLike | None = None, config: ProjectConfig | None = None) -> Home:
    """Create the home's folders, config, database and Oxen repository.

    Running it on an existing home fails rather than overwrite its config."""
    from herdbook.feedback.versioning import init_repository, use_user_config

    root = resolve_home(path)
    if (root / CONFIG_NAME).exists():
        raise HomeError(f"{root} already holds a herdbook project")
    if root.exists() and not root.is_dir():
        raise HomeError(f"{root} exists and is not a folder")
    config = config or ProjectConfig()
    if not config.project_id:
        config = config.with_changes(project_id=uuid.uuid4().hex[:12])
    home = Home(root, config)
    for folder in (root, home.candidates_dir, home.rounds_dir):
        folder.mkdir(parents=True, exist_ok=True)
    init_repository(home.dataset_dir)
    use_user_config(home.dataset_repo)
    home.open_store(create=True).close()
    home.config.save(home.config_path)  # last: a home counts as made once its config exists
    return home
