"""`herdbook doctor`: what is wrong with a home, and what to do about it. It only reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from herdbook.errors import HerdbookError


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str
    fix: str = ""


def examine(home_path: str | Path | None) -> list[Finding]:
    """Every check, in order; a check that cannot run (no config, no database) says so and the
    ones that need it are skipped."""
    from herdbook.home import load_home

    try:
        home = load_home(home_path)
    except HerdbookError as error:
        return [Finding(False, f"config: {error}", "correct herdbook.toml (each line above names the setting)")]
    findings = [Finding(True, f"config {home.config_path} reads")]
    findings += [Finding(False, problem, fix) for problem, fix in home.readable_by_others()]
    findings += _database(home)
    return findings


def _database(home) -> list[Finding]:
    from herdbook.db.store import SCHEMA_REVISION, current_revision, integrity_problems
    from herdbook.feedback.catalog import damaged_files, missing_files

    try:
        store = home.open_store(upgrade=False)  # doctor only reads: an older schema stays as it is
    except HerdbookError as error:
        return [Finding(False, f"database: {error}", "restore herdbook.db from a backup (`herdbook restore`)")]
    try:
        if current_revision(store.engine) != SCHEMA_REVISION:
            return [
                Finding(True, "database is from an older herdbook; any other command upgrades it, then check again")
            ]
        problems = integrity_problems(store)
        findings = [
            Finding(not problems, "database is sound" if not problems else f"database: {'; '.join(problems[:3])}",
                    "" if not problems else "restore herdbook.db from a backup (`herdbook restore`)")
        ]  # fmt: skip
        with store.transaction() as session:
            missing = missing_files(session, home.root)
            findings.append(
                _none_of(missing, "every candidate's image file is there",
                         lambda: f"{len(missing)} candidate file(s) missing, e.g. #{missing[0][0]} {missing[0][2]}",
                         "restore candidates/ from a backup; syncs leave these images out meanwhile")
            )  # fmt: skip
            damaged = damaged_files(session, home.root)
            findings.append(
                _none_of(damaged, "every candidate's image file holds the bytes it was stored with",
                         lambda: f"{len(damaged)} candidate file(s) damaged (their bytes changed since import), "
                                 f"e.g. #{damaged[0][0]} {damaged[0][2]}",
                         "restore candidates/ from a backup")
            )  # fmt: skip
            findings += _versions(home, session)
    finally:
        store.close()
    return findings


def _versions(home, session) -> list[Finding]:
    from herdbook.feedback import versioning
    from herdbook.feedback.catalog import candidate_hashes
    from herdbook.feedback.curation import list_versions

    try:
        commits = versioning.history(home.dataset_dir)
    except HerdbookError as error:
        return [Finding(False, f"dataset: {error}", "restore dataset/ from a backup (`herdbook restore`)")]
    in_oxen = {c.id for c in commits}
    recorded = {v.commit_id for v in list_versions(session)}
    findings = [Finding(True, f"dataset repository has {len(commits)} commit(s)")]
    if in_oxen - recorded:
        findings.append(
            Finding(False, f"{len(in_oxen - recorded)} Oxen commit(s) not recorded as versions", "run `herdbook sync`")
        )
    if recorded - in_oxen:
        findings.append(
            Finding(
                False,
                f"{len(recorded - in_oxen)} recorded version(s) missing from the Oxen repository",
                "restore dataset/ from a backup (`herdbook restore`)",
            )
        )
    if not in_oxen ^ recorded:
        findings.append(Finding(True, f"all {len(recorded)} version(s) recorded and present"))
    damaged = versioning.damaged_image_objects(home.dataset_dir, candidate_hashes(session))
    findings.append(
        _none_of(damaged, "every image the Oxen repository stores holds the bytes it was committed with",
                 lambda: f"{len(damaged)} image(s) in the Oxen repository damaged (their bytes changed since the "
                         f"commit), e.g. {damaged[0].relative_to(home.dataset_dir)}",
                 "restore dataset/ from a backup (`herdbook restore`)")
    )  # fmt: skip
    return findings


def _none_of(problems: list, fine: str, described, fix: str) -> Finding:
    """A check that passes when it found nothing; ``described()`` says what it found."""
    return Finding(True, fine) if not problems else Finding(False, described(), fix)
