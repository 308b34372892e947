"""Errors a user can act on. Each edge (CLI, app) turns them into one message."""


class HerdbookError(Exception):
    """Base for every expected failure; the message says what to do next."""


class HomeError(HerdbookError):
    """The project home is missing, already exists, or its config is broken."""


class ImportProblem(HerdbookError):
    """A file or table could not be imported."""


class NotFound(HerdbookError):
    """A candidate, round, rater, dataset version or model that was asked for does not exist."""


class VersioningError(HerdbookError):
    """The Oxen repository refused an operation."""


class PushError(VersioningError):
    """A push to the Oxen remote failed; the local commit is kept."""


class ModelLoadError(HerdbookError):
    """A base model or round output could not be loaded."""


class JobError(HerdbookError):
    """A background job could not be queued, run or found."""
