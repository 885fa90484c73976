"""Ledger changes written now, or kept in order while the ledger cannot be written (full state disk, read-only
remount) and written as soon as it takes writes again; and files the outbox refused, written again later.

Meanwhile a job's new state lives in memory (:meth:`KeptWrites.job` answers with it, so status files and
notifications use it). If the daemon stops before the changes are written, the ledger still holds the earlier,
consistent state, and the next start's crash recovery requeues the jobs it shows running."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

from daemon.ledger import Job, Ledger, LedgerError

log = logging.getLogger("hotmesh.daemon")


@dataclasses.dataclass(frozen=True)
class KeptWrite:
    """A ledger change waiting for the ledger to take writes again."""

    what: str  # for the log: "start event", "re-drop event", ...
    job_id: str | None
    apply: Callable[[Ledger], Any]


class KeptWrites:
    """The daemon's one path to the ledger's writes. ``ledger`` returns the open ledger; ``on_problem`` runs when the
    ledger stops or starts taking writes again; ``on_settled`` gets each job whose kept changes are all written."""

    def __init__(self, ledger: Callable[[], Ledger], on_problem: Callable[[], Any],
                 on_settled: Callable[[Job], Any]) -> None:
        self._ledger, self._on_problem, self._on_settled = ledger, on_problem, on_settled
        self.pending: list[KeptWrite] = []
        self._views: dict[str, Job] = {}  # jobs whose new state is not written yet
        self.problem: str | None = None  # why the ledger cannot be written, while it cannot

    def down(self, e: LedgerError) -> None:
        """The ledger refused a read or a write: said once, until it works again."""
        if self.problem is None:
            log.error("%s. The daemon keeps running: no new job starts, and state changes are kept in memory and "
                      "written as soon as the ledger takes writes again", e)
            self.problem = str(e)
            self._on_problem()

    def works(self) -> None:
        """A write went through with nothing kept waiting: whatever the problem was, it has passed."""
        if self.problem is not None:
            log.info("the ledger takes writes again")
            self.problem = None
            self._on_problem()

    def write(self, what: str, job_id: str | None, apply: Callable[[Ledger], Any]) -> bool:
        """Apply one ledger change now, or keep it, in order behind any earlier one, for :meth:`flush`.
        Returns whether it was written now."""
        if not self.pending:
            try:
                apply(self._ledger())
            except LedgerError as e:
                self.down(e)
            else:
                self.works()
                return True
        self.pending.append(KeptWrite(what, job_id, apply))
        return False

    def flush(self) -> None:
        """Write the changes kept while the ledger could not be written, oldest first."""
        flushed = 0
        while self.pending:
            w = self.pending[0]
            try:
                w.apply(self._ledger())
            except LedgerError as e:
                self.down(e)
                return
            self.pending.pop(0)
            flushed += 1
            if w.job_id and not any(p.job_id == w.job_id for p in self.pending):
                self._views.pop(w.job_id, None)  # the ledger says it now
                current = self._ledger().get(w.job_id)
                if current is not None:
                    self._on_settled(current)
        if flushed:
            log.info("%d kept ledger change(s) written", flushed)
            self.works()

    def job(self, job_id: str) -> Job | None:
        """A job as the daemon knows it: the ledger's row, or the state it moved to that is not written yet."""
        return self._views.get(job_id) or self._ledger().get(job_id)

    def kept(self, job_id: str) -> bool:
        """Whether ``job_id`` has a state change not written yet."""
        return job_id in self._views

    def change(self, what: str, view: Job, apply: Callable[[Ledger], Any]) -> Job | None:
        """A job's state change: into the ledger, or kept with ``view`` (the job as it is now) until it can be.
        Returns the job as it now stands."""
        if self.write(what, view.id, apply):
            return self._ledger().get(view.id)
        self._views[view.id] = view
        return view

    def describe(self) -> str:
        """The changes still waiting, for the log line of a daemon that stops before they are written."""
        return "; ".join(f"{w.what} ({w.job_id})" if w.job_id else w.what for w in self.pending)


class LaterFiles:
    """Files the outbox refused (status files, reports), each tried again on every turn of the daemon's loop until
    it is written. Keys are "status:<job>" or "report:<job>"; a newer attempt for a key replaces the older one."""

    def __init__(self) -> None:
        self._later: dict[str, Callable[[], bool]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._later

    def keep(self, key: str, attempt: Callable[[], bool]) -> None:
        self._later[key] = attempt

    def drop(self, key: str) -> None:
        self._later.pop(key, None)

    def retry(self) -> None:
        for key, attempt in list(self._later.items()):
            try:
                done = attempt()
            except (OSError, LedgerError):
                done = False
            if done:
                self._later.pop(key, None)
                what, _, name = key.partition(":")
                log.info("the %s of %s is written after all", "report" if what == "report" else "status file", name)
