"""Schema and sessions: the only package that knows how herdbook's data is stored."""

from herdbook.db.models import (
    Base,
    Candidate,
    DatasetVersion,
    Job,
    Rater,
    Round,
    Vote,
    VoteValue,
)
from herdbook.db.store import Store, open_store

__all__ = [
    "Base",
    "Candidate",
    "DatasetVersion",
    "Job",
    "Rater",
    "Round",
    "Store",
    "Vote",
    "VoteValue",
    "open_store",
]
