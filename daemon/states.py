"""Job states: the one place they are defined."""
from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLED = "cancelled"
    FAILED = "failed"
    DONE = "done"

    @property
    def terminal(self) -> bool:
        return self in (JobState.CANCELLED, JobState.FAILED, JobState.DONE)
