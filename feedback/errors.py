"""What curation can refuse."""

from herdbook.db.errors import HerdbookError


class ImportProblem(HerdbookError):
    """A file or table could not be imported."""


class VersioningError(HerdbookError):
    """The Oxen repository refused an operation."""


class PushError(VersioningError):
    """A push to the Oxen remote failed; the local commit is kept."""
