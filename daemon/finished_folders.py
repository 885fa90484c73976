"""Which finished jobs' inbox folders a scan compares with their content, and what was already answered for.

A done or cancelled job's folder is compared in full only after its directories' cheap stamp moved (files added,
removed, or the folder replaced: what a re-drop does), so a large inbox of finished folders costs a stat per
directory. A failed job's folder is compared at every scan (a fix may rewrite a file in place). Content already
answered for (a re-drop refused, a rerun started) is the baseline instead of the job's own fingerprint while that
fingerprint is unchanged, so the same content is never answered twice.
"""
from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from daemon.intake import dir_stamp
from daemon.ledger import FolderJob
from daemon.states import JobState


class FinishedFolders:
    def __init__(self, rescan_seconds: float) -> None:
        self.rescan_seconds = rescan_seconds
        self._stamps: dict[str, Any] = {}  # folder -> its directories' stamp at the last look
        self._stamped = float("-inf")  # when the stamps were last taken (every rescan_seconds)
        # folder -> (its job's fingerprint, content already answered for): valid while the job's is unchanged
        self._acknowledged: dict[str, tuple[str, str]] = {}

    def acknowledge(self, folder: str, job_fingerprint: str, content: str) -> None:
        """``content`` of ``folder`` is answered for while its job's fingerprint stays ``job_fingerprint``."""
        self._acknowledged[folder] = (job_fingerprint, content)

    def forget(self, folder: str) -> None:
        """The job's own fingerprint is the baseline again (the job was queued with the new content)."""
        self._acknowledged.pop(folder, None)

    def baselines(self, inbox: Path, jobs: Mapping[str, FolderJob], pending: Collection[str]) -> dict[str, str]:
        """Finished jobs' folders to compare now -> the fingerprint to compare against. ``pending``: folders whose
        change is still settling, compared at every scan until it has."""
        out: dict[str, str] = {}
        now = time.monotonic()
        stamps_due = now - self._stamped >= self.rescan_seconds
        if stamps_due:
            self._stamped = now
        for folder, job in jobs.items():
            if not job.state.terminal:
                continue
            ack = self._acknowledged.get(folder)
            base = ack[1] if ack is not None and ack[0] == job.fingerprint else job.fingerprint
            if job.state == JobState.FAILED or folder in pending:
                out[folder] = base
                continue
            if not stamps_due:
                continue
            stamp = dir_stamp(inbox / folder)
            if stamp is not None and self._stamps.get(folder) != stamp:
                self._stamps[folder] = stamp
                out[folder] = base
        return out
