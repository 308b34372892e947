"""herdbook's tables, in SQLAlchemy 2.0's typed ORM style.

Changing a model means adding an Alembic migration under ``db/migrations/versions``;
``tests/db/test_migrations.py`` fails until the two agree.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, Float, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012 (SQLAlchemy reads it)


class VoteValue(enum.StrEnum):
    accept = "accept"
    reject = "reject"
    skip = "skip"


class Candidate(Base):
    """One image someone may rate. The sha256 of its bytes is its identity."""

    __tablename__ = "candidates"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(String(512))  # relative to the home
    source_name: Mapped[str] = mapped_column(String(512))
    prompt: Mapped[str] = mapped_column(Text, default="")
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int | None]
    generation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"), index=True)
    width: Mapped[int]
    height: Mapped[int]
    phash: Mapped[str | None] = mapped_column(String(16))  # perceptual hash, hex, for near-copies
    # scored when generated (training.evaluation): mean DINO similarity to the instance set of
    # that time, and CLIP similarity to its own prompt; None where no model could score it
    dino: Mapped[float | None] = mapped_column(Float)
    clip_t: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    round: Mapped[Round | None] = relationship(foreign_keys=[round_id])


class Rater(Base):
    __tablename__ = "raters"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Vote(Base):
    """Every vote ever cast. ``is_current`` marks the one that counts per rater and image;
    older votes and undone ones stay as history."""

    __tablename__ = "votes"
    __table_args__ = (
        Index(
            "uq_votes_current",
            "candidate_id",
            "rater_id",
            unique=True,
            sqlite_where=text("is_current"),
            postgresql_where=text("is_current"),
        ),
        Index("ix_votes_rater_current", "rater_id", "is_current"),
        Index("ix_votes_candidate_current", "candidate_id", "is_current"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"))
    value: Mapped[VoteValue] = mapped_column(Enum(VoteValue, native_enum=False, length=16))
    is_current: Mapped[bool] = mapped_column(default=True)
    undone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    candidate: Mapped[Candidate] = relationship()
    rater: Mapped[Rater] = relationship()


class DatasetVersion(Base):
    """A curated dataset as committed to the home's Oxen repository."""

    __tablename__ = "dataset_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    commit_id: Mapped[str] = mapped_column(String(64), unique=True)
    branch: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text, default="")
    n_images: Mapped[int] = mapped_column(default=0)
    n_selected: Mapped[int] = mapped_column(default=0)
    n_votes: Mapped[int] = mapped_column(default=0)
    selected_ids: Mapped[list[Any]] = mapped_column(default=list)
    pushed: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Round(Base):
    """One Dreambooth training round: where it started, what it learnt from, how it went."""

    __tablename__ = "rounds"

    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"))
    base_model: Mapped[str] = mapped_column(String(512))
    dataset_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    mode: Mapped[str] = mapped_column(String(16))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    step: Mapped[int] = mapped_column(default=0)
    loss_history: Mapped[list[Any]] = mapped_column(default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    output_path: Mapped[str | None] = mapped_column(String(512))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # beaten every few seconds while the round trains; a running round whose beat stops was killed
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    parent: Mapped[Round | None] = relationship(remote_side=[id], foreign_keys=[parent_id])
    dataset_version: Mapped[DatasetVersion | None] = relationship()


class Job(Base):
    """Background work (training, generation) as the app and CLI see it."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[float] = mapped_column(default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    log: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    worker_pid: Mapped[int | None]
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class User(Base):
    """Someone who signs in to the app. Once one exists, nobody rates without signing in."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))  # as typed; also the rater name their votes carry
    name_key: Mapped[str] = mapped_column(String(64), unique=True)  # lower-cased: "Ann" and "ann" are one
    role: Mapped[str] = mapped_column(String(16))  # "rater" or "admin"
    password_hash: Mapped[str] = mapped_column(String(256))  # argon2id, never the password
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Action(Base):
    """Who did what beyond voting (votes carry their rater): syncs, rounds, jobs, deletions."""

    __tablename__ = "actions"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
