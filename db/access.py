"""Who may do what: users who sign in, their roles, and the record of who did what.

Without any user the app is open (and `herdbook serve` keeps it on loopback); the first
`herdbook users add` turns sign-in on. Passwords are kept only as argon2id hashes."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from herdbook.db.errors import Forbidden, HerdbookError, NotFound, SignInRefused
from herdbook.db.models import Action, User
from sqlalchemy import select
from sqlalchemy.orm import Session

ROLES = ("rater", "admin")
# a user's or rater's name: letters and digits of any script, spaces and a few marks names and
# e-mail addresses use (it is shown in tables, logs and the URL's ?rater=)
NAME_PATTERN = re.compile(r"[^\W_][\w .'@+-]*")
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
    if not NAME_PATTERN.fullmatch(name):
        raise HerdbookError(f"{name!r} is not a user name: use letters, digits, spaces and . ' @ + - _")
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


# Repeated failed sign-ins cost time, then lock: per user name (whoever tries it) and per client
# (whatever names it tries). Counted since the last success or `herdbook users unlock`, over the
# last hour; a refused try is not checked and not counted. So per hour an attacker gets at most
# 10 guesses at one name, and one client at most 30 guesses over all names.
@dataclass(frozen=True)
class Throttle:
    free: int  # failures in a row before any wait
    lock_after: int  # failures in a row that lock until unlocked or the window has passed
    window_seconds: float = 3600


BY_NAME = Throttle(free=3, lock_after=10)
BY_CLIENT = Throttle(free=10, lock_after=30)
SIGN_IN_ACTIONS = ("failed sign-in", "signed in", "unlock sign-in")


def wait_before_next_try(failures: list[datetime], now: datetime, rule: Throttle) -> float:
    """Seconds before another try may be checked, given the times of the failures in a row
    (oldest first): none for the first few, then doubling from 2 s, then the rest of the window."""
    recent = [at for at in failures if (now - at).total_seconds() < rule.window_seconds]
    if len(recent) < rule.free:
        return 0.0
    if len(recent) >= rule.lock_after:
        wait = rule.window_seconds
    else:
        wait = min(2.0 ** (len(recent) - rule.free + 1), rule.window_seconds)
    return max(0.0, wait - (now - recent[-1]).total_seconds())


def failures_in_a_row(attempts: list[tuple[datetime, str]]) -> list[datetime]:
    """The failures after the last success or unlock, from (time, action) oldest first."""
    failures: list[datetime] = []
    for at, action in attempts:
        failures = [*failures, at] if action == "failed sign-in" else []
    return failures


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _recent_sign_ins(session: Session, now: datetime) -> list[Action]:
    since = now - timedelta(seconds=max(BY_NAME.window_seconds, BY_CLIENT.window_seconds))
    rows = session.scalars(
        select(Action).where(Action.action.in_(SIGN_IN_ACTIONS), Action.at >= since).order_by(Action.id)
    )
    return list(rows)


def sign_in(session: Session, name: str, password: str, client: str, now: datetime | None = None) -> Actor | None:
    """The user if the password is theirs, None if not (which of the two was wrong is not said);
    SignInRefused, unchecked and unrecorded, while the name or the client is held back by
    earlier failures. Each checked try goes into the action log (`herdbook log`), so the caller
    commits a failure as it commits a success."""
    now = now or datetime.now(UTC)
    key = " ".join((name or "").split()).lower()[:64]
    recent = _recent_sign_ins(session, now)
    by_name = [(_aware(a.at), a.action) for a in recent if a.actor.lower() == key]
    # an unlock of any name also clears the clients (on loopback every browser is one client)
    by_client = [
        (_aware(a.at), a.action) for a in recent if a.detail.get("client") == client or a.action == "unlock sign-in"
    ]
    for rule, attempts, whose in ((BY_NAME, by_name, "this name"), (BY_CLIENT, by_client, "this browser's address")):
        wait = wait_before_next_try(failures_in_a_row(attempts), now, rule)
        if wait > 0:
            if wait > 300:
                raise SignInRefused(
                    f"Sign-in for {whose} is locked after {rule.lock_after} failed tries: an admin can run "
                    f"`herdbook users unlock NAME`, or it opens again in {wait / 60:.0f} min"
                )
            raise SignInRefused(f"Too many failed sign-ins for {whose}: try again in {wait:.0f} s")
    actor = authenticate(session, name, password)
    outcome = "signed in" if actor else "failed sign-in"
    session.add(Action(at=now, actor=key or "(no name)", action=outcome, detail={"client": client}))
    return actor


def unlock_sign_in(session: Session, name: str) -> None:
    """Forget a name's failed sign-ins (and the clients'), as an admin decides."""
    session.add(Action(actor=" ".join(name.split()).lower()[:64], action="unlock sign-in", detail={}))


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
