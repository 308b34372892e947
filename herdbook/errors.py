"""Every error a user can act on, for the top layer (CLI, app, jobs). Each lower layer owns
its own; this module only gathers them and adds the home's and the job queue's."""

from herdbook.db.errors import HerdbookError, NotFound, SettingsError
from herdbook.feedback.errors import ImportProblem, PushError, VersioningError
from herdbook.training.errors import ModelLoadError


class HomeError(HerdbookError):
    """The project home is missing, already exists, or its config is broken."""


class JobError(HerdbookError):
    """A background job could not be queued, run or found."""


__all__ = [
    "HerdbookError",
    "HomeError",
    "ImportProblem",
    "JobError",
    "ModelLoadError",
    "NotFound",
    "PushError",
    "SettingsError",
    "VersioningError",
]
