"""Who may do what: users who sign in, their roles, and the record of who did what.

Without any user the app is open (and `herdbook serve` keeps it on loopback); the first
`herdbook users add` turns sign-in on. Passwords are kept only as argon2id hashes."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from herdbook.db.errors import Forbidden, HerdbookError, NotFound
from herdbook.db.models import Action, User
from sqlalchemy import select
from sqlalchemy.orm import Session

ROLES = ("rater", "admin")
MIN_PASSWORD = 8


@functools.cache
def _hasher():
    """argon2id with the library's current recommended cost. Made on first use: importing argon2
    and hashing the stand-in below cost every command ~0.3 s, `herdbook vote` included."""
    from argon2 import PasswordHasher

    return PasswordHasher()


@functools.cache
def _nobody() -> str:
    """Verified when a name is unknown, so a wrong name costs what a wrong password costs."""
    return _hasher().hash("no such user, but the same work")


@dataclass(frozen=True)
class Actor:
    """Who is acting: a signed-in user, the open app's rater, or the CLI's operator."""

    name: str
    role: str = "admin"
    signed_in: bool = False
    operator: bool = False  # the CLI's user: holds the home's files, so no sign-in could stop them

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def require_admin(self, doing: str) -> None:
        if not self.is_admin:
            raise Forbidden(f"{self.name} signs in as a rater; only an admin may {doing}")


def sign_in_required(session: Session) -> bool:
    return session.scalar(select(User.id).limit(1)) is not None


def _user(session: Session, name: str) -> User | None:
    return session.scalars(select(User).where(User.name_key == name.strip().lower())).one_or_none()


def add_user(session: Session, name: str, role: str, password: str) -> User:
    name = " ".join(name.split())
    if not name or len(name) > 64:
        raise HerdbookError("a user needs a name of 1 to 64 characters")
    if role not in ROLES:
        raise HerdbookError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if len(password) < MIN_PASSWORD:
        raise HerdbookError(f"the password is too short: at least {MIN_PASSWORD} characters")
    if _user(session, name) is not None:
        raise HerdbookError(f"there is already a user {name!r} (names are matched whatever their case)")
    user = User(name=name, name_key=name.lower(), role=role, password_hash=_hasher().hash(password))
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, name: str, password: str) -> None:
    user = _user(session, name)
    if user is None:
        raise NotFound(f"no user {name!r} (see `herdbook users`)")
    if len(password) < MIN_PASSWORD:
        raise HerdbookError(f"the password is too short: at least {MIN_PASSWORD} characters")
    user.password_hash = _hasher().hash(password)


def remove_user(session: Session, name: str) -> None:
    user = _user(session, name)
    if user is None:
        raise NotFound(f"no user {name!r} (see `herdbook users`)")
    session.delete(user)


def list_users(session: Session) -> list[dict]:
    return [
        {"name": u.name, "role": u.role, "created": u.created_at.isoformat(timespec="seconds")}
        for u in session.scalars(select(User).order_by(User.name_key))
    ]


def authenticate(session: Session, name: str, password: str) -> Actor | None:
    """The user as an Actor when the password is theirs, else None (which, is not said)."""
    from argon2.exceptions import InvalidHashError, VerificationError

    user = _user(session, name or "")
    try:
        _hasher().verify(user.password_hash if user else _nobody(), password or "")
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if _hasher().check_needs_rehash(user.password_hash):
        user.password_hash = _hasher().hash(password)
    return Actor(user.name, user.role, signed_in=True)


def still_signed_in(session: Session, actor: Actor) -> Actor | None:
    """The signed-in actor as the users table has them now: a removed user is signed out, a
    changed role applies at once (a browser session may outlive either)."""
    user = _user(session, actor.name)
    return Actor(user.name, user.role, signed_in=True) if user is not None else None


def as_now(session: Session, actor: Actor) -> Actor:
    """The actor as the users table has them at this moment, for each action: a browser tab
    keeps the actor of its last page load, and users may have been added, removed or changed
    since. No users: the app is open and everyone acts as an admin. Users: only a signed-in
    user who still exists acts, with the role they have now."""
    if actor.operator:
        return actor
    if not sign_in_required(session):
        return Actor(actor.name, "admin")
    if not actor.signed_in:
        raise Forbidden("this app asks everyone to sign in now: reload the page and sign in")
    user = _user(session, actor.name)
    if user is None:
        raise Forbidden(f"{actor.name} is no longer a user here: reload the page")
    return Actor(user.name, user.role, signed_in=True)


def record_action(session: Session, actor: Actor, action: str, **detail: Any) -> None:
    session.add(Action(actor=actor.name, action=action, detail=detail))


def recent_actions(session: Session, limit: int = 50) -> list[Action]:
    return list(session.scalars(select(Action).order_by(Action.id.desc()).limit(limit)))
