"""The one module that talks to Oxen.

Everything herdbook keeps in Oxen goes through these functions, so the rest of the code
deals in plain paths and commit ids.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from herdbook.db.errors import StrictSettings
from herdbook.feedback.errors import PushError, VersioningError
from pydantic import Field


class OxenSettings(StrictSettings):
    """``[oxen]`` in herdbook.toml: where curated datasets are pushed, and who commits them."""

    remote: str = ""  # e.g. https://hub.oxen.ai/my-team/oxenai-ox ; empty: local only
    remote_name: str = "origin"
    branch: str = "main"
    user_name: str = "herdbook"
    user_email: str = "herdbook@localhost"
    push_timeout_seconds: float = Field(120, gt=0)  # a remote that never answers fails the push after this


@dataclass(frozen=True)
class DatasetRepo:
    """The Oxen repository of curated datasets, as plain values: where it is, its settings,
    and the folder that holds the Oxen user config herdbook falls back to."""

    path: Path
    settings: OxenSettings
    user_config_dir: Path


@dataclass(frozen=True)
class Commit:
    id: str
    message: str
    timestamp: str


def use_user_config(dataset: DatasetRepo) -> None:
    """Point Oxen at a user config. A user's own global Oxen config (with their auth for a
    remote) wins; otherwise the home keeps one of its own so commits work on a fresh machine."""
    import oxen

    global_config = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "oxen" / "user_config.toml"
    if "OXEN_CONFIG_DIR" not in os.environ and global_config.exists():
        return
    if "OXEN_CONFIG_DIR" not in os.environ:
        os.environ["OXEN_CONFIG_DIR"] = str(dataset.user_config_dir)
    target = Path(os.environ["OXEN_CONFIG_DIR"])
    if not (target / "user_config.toml").exists():
        target.mkdir(parents=True, exist_ok=True)
        with _quiet():
            oxen.user.config_user(
                dataset.settings.user_name, dataset.settings.user_email, str(target / "user_config.toml")
            )


@contextlib.contextmanager
def _quiet():
    """Oxen's Rust core prints a line per add and commit straight to file descriptor 1;
    herdbook says what happened in its own words, so that output goes to /dev/null."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _repo(path: Path):
    from oxen import Repo

    if not (path / ".oxen").is_dir():
        raise VersioningError(
            f"{path} holds no Oxen repository (its .oxen folder is missing): restore the dataset folder from a "
            "backup (`herdbook restore`); `herdbook doctor` lists what else is wrong"
        )
    return Repo(str(path))


# --- every Oxen operation runs in a short-lived child process ----------------------------
#
# Oxen's Python binding keeps a repository's refs database open, and locked, for the life of
# the process that opened it: after one "Sync now" in the app, every `herdbook sync` failed
# with RefsDbOpenFailed until the app stopped. A child process per operation releases the lock
# when it exits, and can be killed when a remote never answers. A file lock keeps two
# processes from working on the working tree at once (a sync writing it while an export
# restores an old file into it).


def init_repository(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if not (path / ".oxen").is_dir():
        _in_child("init_repository", path)


def has_changes(path: Path) -> bool:
    return _in_child("has_changes", path)


def commit(path: Path, paths: Iterable[str], message: str) -> Commit | None:
    """Stage ``paths`` (files or folders, relative to the repo) as they are in the working
    tree, deletions included, and commit them. Returns None when nothing changed."""
    made = _in_child("commit", path, list(paths), message)
    return None if made is None else Commit(**made)


def history(path: Path) -> list[Commit]:
    """Commits, newest first."""
    return [Commit(**c) for c in _in_child("history", path)]


def copy_out(path: Path, commit_id: str, relpaths: Iterable[str], dest: Path) -> list[Path]:
    """Copy files as they were at ``commit_id`` into ``dest`` and leave the working tree as it was."""
    return [Path(p) for p in _in_child("copy_out", path, commit_id, list(relpaths), dest)]


@contextlib.contextmanager
def working_tree_lock(path: Path, timeout: float = -1):
    """Held while a process writes the working tree and commits it, or restores old files into it.
    Once it is ours, an Oxen child that a killed process left behind finishes first: the lock of
    a process killed with -9 goes with it, but its child goes on committing, and a sync beside
    it found "nothing new" while the child's commit went unrecorded. (``timeout``: seconds to
    wait, -1 for as long as it takes; filelock.Timeout when they pass.)"""
    if not (path / ".oxen").is_dir():
        _repo(path)  # raises the VersioningError that says what to do
    with _lock(path.with_name(f".{path.name}.lock"), timeout):  # beside the repository, not in it
        with _writer_lock(path, timeout):
            pass
        yield


def _writer_lock(path: Path, timeout: float = -1):
    """Held by an Oxen child for as long as it writes the working tree or the history, whoever
    started it and whether or not they are still alive."""
    return _lock(writer_lock_path(path), timeout)


def writer_lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.writer.lock")


@contextlib.contextmanager
def _lock(lock_path: Path, timeout: float):
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:  # a TimeoutError, so an OSError too: the caller's to handle
        raise
    except OSError as error:  # a folder or an unreadable file where the lock file goes
        raise VersioningError(
            f"can't take the lock {lock_path} ({error.strerror}): it must be a file this user can write; "
            "remove it if it is anything else"
        ) from None
    try:
        yield lock
    finally:
        lock.release()


WRITES_THE_WORKING_TREE = {"commit", "copy_out"}
BACKGROUND_NICENESS = 10  # added to an Oxen child's niceness (Unix): its work is background work


def _in_child(operation: str, path: Path, *args, timeout: float | None = None):
    import json
    import subprocess

    if not (Path(path) / ".oxen").is_dir() and operation != "init_repository":
        _repo(Path(path))  # raises the VersioningError that says what to do
    request = json.dumps([operation, str(path), [str(a) if isinstance(a, Path) else a for a in args]])
    command = [sys.executable, "-m", "herdbook.feedback.versioning"]
    try:
        done = subprocess.run(command, input=request, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(operation) from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 and not lines:
        raise VersioningError(f"Oxen's {operation} failed: {done.stderr.strip().splitlines()[-1:] or 'no output'}")
    reply = json.loads(lines[-1])
    if "error" in reply:
        kind = {"PushError": PushError}.get(reply["error"], VersioningError)
        raise kind(reply["message"])
    return reply["result"]


def _serve_one_request() -> None:
    """The child's side: read one request from standard input, answer with one JSON line."""
    import json
    from dataclasses import asdict

    if hasattr(os, "nice"):
        # Oxen hashes and uploads on every core; at a lower priority it yields them to what a
        # person waits on meanwhile (a `herdbook vote`, the app) and takes the idle time.
        os.nice(BACKGROUND_NICENESS)

    operation, path, args = json.loads(sys.stdin.read())
    work = {
        "init_repository": _init_repository,
        "has_changes": _has_changes,
        "commit": _commit,
        "history": _history,
        "copy_out": _copy_out,
        "push": _push,
    }[operation]
    held = _writer_lock(Path(path)) if operation in WRITES_THE_WORKING_TREE else contextlib.nullcontext()
    try:
        if operation == "copy_out":
            args = [args[0], args[1], Path(args[2])]
        with held:
            result = work(Path(path), *args)
    except (VersioningError, PushError) as error:
        print(json.dumps({"error": type(error).__name__, "message": str(error)}))
        return
    if isinstance(result, Commit):
        result = asdict(result)
    elif isinstance(result, list):
        result = [asdict(r) if isinstance(r, Commit) else str(r) for r in result]
    print(json.dumps({"result": result}))


def _init_repository(path: Path) -> None:
    from oxen import Repo

    path.mkdir(parents=True, exist_ok=True)
    if (path / ".oxen").is_dir():
        return
    with _quiet():
        Repo(str(path)).init()


def _has_changes(path: Path) -> bool:
    with _quiet():
        return _repo(path).status().is_dirty()


def _commit(path: Path, paths: Iterable[str], message: str) -> Commit | None:
    """Stage ``paths`` (files or folders, relative to the repo) as they are in the working
    tree, deletions included, and commit them. Returns None when nothing changed."""
    repo = _repo(path)
    try:
        with _quiet():
            for relpath in paths:
                repo.add(str(path / relpath))
            status = repo.status()
            if not (status.added_files() or status.modified_files() or status.removed_files()):
                return None
            made = repo.commit(message)
    except ValueError as error:
        raise VersioningError(f"Oxen refused the commit: {error}") from error
    return Commit(made.id, made.message, str(made.timestamp))


def _history(path: Path) -> list[Commit]:
    """Commits, newest first."""
    with _quiet():
        try:
            entries = _repo(path).log()
        except ValueError:
            return []  # a repository with no commit yet
    return [Commit(c.id, c.message, str(c.timestamp)) for c in entries]


def _copy_out(path: Path, commit_id: str, relpaths: Iterable[str], dest: Path) -> list[Path]:
    """Copy files as they were at ``commit_id`` into ``dest`` and leave the working tree as it was.

    Oxen's Python API checks out branches, not commits, so each file is restored from the
    commit into the working tree, copied, and the working tree put back."""
    repo = _repo(path)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for relpath in relpaths:
        target = path / relpath
        backup = target.read_bytes() if target.exists() else None
        try:
            with _quiet():
                repo.restore(relpath, source=commit_id)
            out = dest / Path(relpath).name
            shutil.copyfile(target, out)
            written.append(out)
        except ValueError as error:
            raise VersioningError(f"{relpath} is not in dataset commit {commit_id}: {error}") from error
        finally:
            if backup is None:
                target.unlink(missing_ok=True)
            elif target.read_bytes() != backup:
                target.write_bytes(backup)
    return written


def redact(url: str) -> str:
    """A remote URL fit to print: any user name, password or token in it replaced by ***."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def push(path: Path, settings: OxenSettings) -> None:
    """Push the branch to the configured remote, giving up (and stopping the push) after
    ``push_timeout_seconds``. The local commit stays whatever happens, and no message carries
    the remote's credentials. Call it outside any database transaction."""
    if not settings.remote:
        raise PushError(
            'no Oxen remote is configured: set [oxen] remote = "https://hub.oxen.ai/NAMESPACE/REPO" '
            "in herdbook.toml, and log in once with `oxen config --auth hub.oxen.ai TOKEN`"
        )
    shown = redact(settings.remote)
    netloc = urlsplit(settings.remote).netloc
    secret = netloc.rsplit("@", 1)[0] if "@" in netloc else None
    try:
        _in_child("push", path, settings.remote_name, settings.remote, settings.branch,
                  timeout=settings.push_timeout_seconds)  # fmt: skip
    except TimeoutError:
        raise PushError(
            f"push to {shown} got no answer in {settings.push_timeout_seconds:g} s. The dataset is committed "
            "locally; check the remote, then run `herdbook sync --push` again"
        ) from None
    except PushError as error:
        reason = str(error).replace(secret, "***") if secret else str(error)
        raise PushError(
            f"push to {shown} failed: {reason}. The dataset is committed locally; "
            "check the remote URL and your Oxen credentials, then run `herdbook sync --push` again"
        ) from None


def _push(path: Path, remote_name: str, remote: str, branch: str) -> None:
    repo = _repo(path)
    try:
        with _quiet():
            repo.set_remote(remote_name, remote)
            repo.push(remote_name, branch)
    except Exception as error:  # oxen raises plain ValueError/OSError for network and auth failures
        raise PushError(str(error).splitlines()[0] if str(error) else type(error).__name__) from error


def copy_repository(path: Path, dest: Path, timeout: float = -1) -> None:
    """A copy of the repository's files (working tree and .oxen) for a backup, taken between
    commits: a copy taken while a sync's Oxen child wrote would hold half a commit. (A folder
    without .oxen is copied as it is, for what a backup can save of a damaged home.)"""
    held = working_tree_lock(path, timeout) if (path / ".oxen").is_dir() else contextlib.nullcontext()
    with held:
        shutil.copytree(path, dest, symlinks=True)


IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF")


def damaged_image_objects(path: Path, known_sha256: set[str]) -> list[Path]:
    """Image files in the repository's object store whose bytes are none of the images it was
    given (``known_sha256``: every candidate's hash), e.g. truncated on disk. Oxen keeps each
    version of a file as plain bytes under .oxen/versions; the tables it holds are not checked."""
    damaged = []
    for data in sorted((path / ".oxen" / "versions").rglob("data")):
        with data.open("rb") as handle:
            if not handle.read(8).startswith(IMAGE_MAGIC):
                continue
            handle.seek(0)
            if hashlib.file_digest(handle, "sha256").hexdigest() not in known_sha256:
                damaged.append(data)
    return damaged


if __name__ == "__main__":  # one Oxen operation, asked for by _in_child
    _serve_one_request()
