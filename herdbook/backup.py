"""Backups of a project home, taken while the app runs, and restores into a new home.

A backup folder holds the database (a consistent SQLite snapshot), the config, the candidate
images and the Oxen repository of curated datasets, with a manifest. Round outputs (model
weights) are not included: they can be trained again from the recorded settings and datasets."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

from herdbook.config import ProjectConfig
from herdbook.errors import HerdbookError, HomeError
from herdbook.home import CONFIG_NAME, Home, load_home, resolve_home

MANIFEST = "herdbook-backup.json"


def backup(home: Home, dest: Path) -> dict:
    """Copy ``home`` into the new folder ``dest``; returns the manifest."""
    from herdbook.db.store import copy_database
    from herdbook.feedback.versioning import copy_repository

    dest = dest.expanduser().resolve()
    if dest.is_relative_to(home.root.resolve()):
        raise HomeError(f"{dest} is inside the home {home.root}; a backup goes outside what it copies")
    if dest.exists() and any(dest.iterdir()):
        raise HomeError(f"{dest} is not empty; a backup goes into a new or empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    store = home.open_store()
    try:
        copy_database(store, dest / "herdbook.db")
    finally:
        store.close()
    counts = snapshot_counts(dest / "herdbook.db")  # the snapshot's, not the live database's a moment later
    shutil.copy2(home.config_path, dest / CONFIG_NAME)
    if home.candidates_dir.exists():  # content-addressed files, never changed once written
        shutil.copytree(home.candidates_dir, dest / "candidates")
    copy_repository(home.dataset_dir, dest / "dataset")
    manifest = {"taken": datetime.now(UTC).isoformat(timespec="seconds"), "home": str(home.root), **counts}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def snapshot_counts(database: Path) -> dict:
    """What a database file holds (candidates, votes, ...), read without changing it."""
    from herdbook.db.store import open_store
    from herdbook.feedback.catalog import status

    store = open_store(f"sqlite:///{database}", upgrade=False)
    try:
        with store.transaction() as session:
            return status(session)
    finally:
        store.close()


def check_backup(source: Path) -> dict:
    """The backup's manifest, once its database is sound and holds what the manifest says."""
    from herdbook.db.store import integrity_problems, open_store

    if not (source / MANIFEST).exists() or not (source / "herdbook.db").exists():
        raise HomeError(f"{source} is not a herdbook backup (no {MANIFEST} or herdbook.db)")
    manifest = json.loads((source / MANIFEST).read_text(encoding="utf-8"))
    try:
        store = open_store(f"sqlite:///{source / 'herdbook.db'}", upgrade=False)
        try:
            problems = integrity_problems(store)
        finally:
            store.close()
        if problems:
            raise HomeError(f"the backup's database in {source} is damaged: {'; '.join(problems[:3])}")
        held = snapshot_counts(source / "herdbook.db")
    except HerdbookError as error:
        if isinstance(error, HomeError):
            raise
        raise HomeError(f"the backup's database in {source} cannot be read: {error}") from None
    differ = [f"{key} {manifest[key]} -> {held[key]}" for key in held if key in manifest and manifest[key] != held[key]]
    if differ:
        raise HomeError(f"the backup's database in {source} does not hold what its manifest says ({', '.join(differ)})")
    return manifest


def restore(source: Path, target: str | Path | None) -> Home:
    """Make a new home at ``target`` from the backup in ``source``; never over an existing one,
    never from a damaged one."""
    source = source.expanduser().resolve()
    check_backup(source)
    root = resolve_home(target)
    if root.exists() and any(root.iterdir()):
        raise HomeError(f"{root} is not empty; restore into a new folder")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "herdbook.db", root / "herdbook.db")
    (root / "herdbook.db").chmod(0o600)  # an older backup may have kept the hashes readable to all
    for folder in ("candidates", "dataset"):
        if (source / folder).exists():
            shutil.copytree(source / folder, root / folder, symlinks=True)
    (root / "rounds").mkdir(exist_ok=True)
    config = ProjectConfig.load(source / CONFIG_NAME)
    config.with_changes(database_url="").save(root / CONFIG_NAME)  # the restored file, not the old server
    home = load_home(root)
    home.open_store().close()  # checks the copy opens (and migrates it if it is older)
    return home
