"""Errors a user can act on, and the checking of settings.

This is the bottom of herdbook's layers: db/, feedback/ and training/ all import it and it
imports none of them. Each edge (CLI, app) turns a HerdbookError into one message."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class HerdbookError(Exception):
    """Base for every expected failure; the message says what to do next."""


class NotFound(HerdbookError):
    """A candidate, round, rater, dataset version or model that was asked for does not exist."""


class StoreError(HerdbookError):
    """The database cannot be opened: no driver, a bad URL, a missing or damaged file."""


class StoreBusy(StoreError):
    """A write met the database's lock on every try; what the user did is to be kept and retried."""


class SettingsError(HerdbookError):
    """A config file or a run's settings hold a value that is not allowed (one line per problem)."""


class StrictSettings(BaseModel):
    """Settings that refuse unknown keys and check every value when they are made."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def with_changes(self, **changes: Any):
        """A copy with ``changes`` applied, checked like a new object."""
        return checked(type(self), {**self.model_dump(), **changes})


Model = TypeVar("Model", bound=BaseModel)


def checked(kind: type[Model], data: Any, source: str = "") -> Model:
    """``kind`` built from ``data``, or a SettingsError naming each key, value and what is allowed."""
    try:
        return kind.model_validate(data)
    except ValidationError as error:
        raise SettingsError(describe(error, source)) from None


def describe(error: ValidationError, source: str = "") -> str:
    lines = []
    for problem in error.errors(include_url=False):
        key = ".".join(str(part) for part in problem["loc"]) or "(settings)"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown setting")
        elif problem["type"] == "missing":
            lines.append(f"{key}: required")
        else:
            lines.append(f"{key} = {problem['input']!r}: {message[0].lower()}{message[1:]}")
    prefix = f"{source}: " if source else ""
    return "\n".join(prefix + line for line in lines)


class SignInRefused(HerdbookError):
    """A sign-in that did not succeed: a wrong name or password, or too many failures before it."""


class Forbidden(HerdbookError):
    """The signed-in user's role does not allow the action (raters rate; admins also run things)."""
