"""What training and generation can refuse."""

from herdbook.db.errors import HerdbookError


class ModelLoadError(HerdbookError):
    """A base model or round output could not be loaded."""
