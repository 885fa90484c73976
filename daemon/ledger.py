"""The SQLite job ledger (sqlite-utils, WAL): the single source of truth for jobs.

Every state change is written inside an ``BEGIN IMMEDIATE`` transaction, so the daemon and its worker
processes can write concurrently and a kill -9 at any point leaves a consistent row behind.

SQLite's own errors never leave this module: a ledger that cannot be opened, read or written now (full disk,
read-only volume, I/O error, held locked) raises :class:`LedgerUnavailable`, a damaged file :class:`LedgerCorrupt`;
both carry a sentence that says what happened and what to do. Callers decide whether to retry later (the daemon
does).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

from daemon.states import JobState

SCHEMA_VERSION = 1
BACKUP_SUFFIX = ".bak"  # <state>/ledger.db.bak: the daemon's last good copy (see Ledger.backup)


class LedgerError(Exception):
    """The ledger cannot be used right now. ``str(e)`` is a sentence for the user."""


class LedgerCorrupt(LedgerError):
    """The ledger file is damaged (not a database, malformed pages)."""


class LedgerUnavailable(LedgerError):
    """The ledger cannot be opened, read or written now (full disk, read-only volume, I/O error, lock held too
    long). A change that raised it was rolled back: nothing was changed."""


def corrupt_message(path: Path, detail: str) -> str:
    state = path.parent
    return (f"the job ledger {path} is damaged ({detail}); nothing was changed. Stop the daemon, then run "
            f"`hotmesh ledger check --state {state}` to see what is wrong and `hotmesh ledger rebuild --state {state}` "
            f"to rebuild it from the outbox and state folders (add --from-backup to start from the daemon's last "
            f"backup, {path.name}{BACKUP_SUFFIX}); the damaged file is kept beside it")


def classify(e: sqlite3.Error, path: Path, doing: str) -> LedgerError:
    """An sqlite3 error -> the named exception with a readable message (by SQLite's primary result code)."""
    code = getattr(e, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return LedgerCorrupt(corrupt_message(path, str(e)))
    reasons = {
        sqlite3.SQLITE_FULL: "the disk holding it is full; free space on that volume",
        sqlite3.SQLITE_IOERR: "the disk reported an I/O error (full, or failing); check the volume",
        sqlite3.SQLITE_READONLY: "it is read-only; check the state folder's permissions and mount",
        sqlite3.SQLITE_PERM: "permission denied; check the state folder's permissions",
        sqlite3.SQLITE_CANTOPEN: "the file cannot be opened; check that the state folder exists and is writable",
        sqlite3.SQLITE_BUSY: "another process held it locked for 30 s; try again",
        sqlite3.SQLITE_LOCKED: "another process held it locked for 30 s; try again",
    }
    reason = reasons.get(primary, "see the detail in brackets")
    return LedgerUnavailable(f"the job ledger {path} cannot be {doing} now: {reason} ({e})")


@dataclass(frozen=True)
class Job:
    id: str
    folder: str
    fingerprint: str
    state: JobState
    stage: str | None
    progress: float
    timings: dict[str, dict[str, Any]]
    attempts: int
    error: str | None
    outputs: dict[str, Any]
    worker: str | None
    created: float
    started: float | None
    finished: float | None
    updated: float

    @classmethod
    def from_row(cls, row: sqlite3.Row | dict[str, Any]) -> "Job":
        r = dict(row)
        return cls(
            id=r["id"], folder=r["folder"], fingerprint=r["fingerprint"] or "",
            state=JobState(r["state"]), stage=r["stage"], progress=float(r["progress"] or 0.0),
            timings=json.loads(r["timings"] or "{}"), attempts=int(r["attempts"] or 0),
            error=r["error"], outputs=json.loads(r["outputs"] or "{}"), worker=r["worker"],
            created=r["created"], started=r["started"], finished=r["finished"], updated=r["updated"],
        )

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["state"] = self.state.value
        return d


@dataclass(frozen=True)
class FolderJob:
    id: str
    state: JobState
    fingerprint: str


def slugify(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return slug[:80] or "job"


class Ledger:
    """Job table plus an append-only events table. One instance per process (not thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise classify(e, self.path, "opened") from None
        self.conn = conn
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=30000")
            self.db = sqlite_utils.Database(conn)
            self.db.enable_wal()  # a no-op (no write) when the file is already in WAL mode
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        except sqlite3.Error as e:
            conn.close()
            raise classify(e, self.path, "opened") from None
        try:
            self._ensure_schema()
        except LedgerError:
            conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def _rollback(self) -> None:
        # SQLite may already have rolled back by itself (SQLITE_FULL, SQLITE_IOERR): a second ROLLBACK would
        # raise and hide the first error
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locking) transaction: the unit of every state change. Raises
        :class:`LedgerUnavailable` / :class:`LedgerCorrupt` (after rolling back) when SQLite cannot write."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise classify(e, self.path, "written") from None
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            self._rollback()  # our bug, not the disk's: keep the original error
            raise
        except sqlite3.Error as e:
            self._rollback()
            raise classify(e, self.path, "written") from None
        except BaseException:
            self._rollback()
            raise

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise
        except sqlite3.Error as e:
            raise classify(e, self.path, "read") from None

    def _ensure_schema(self) -> None:
        # read first: an up-to-date ledger is opened without writing, so every process (the daemon, its
        # workers, the CLI) can still open it on a full disk
        try:
            tables = set(self.db.table_names())
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as e:
            raise classify(e, self.path, "opened") from None
        if {"jobs", "events"} <= tables and version == SCHEMA_VERSION:
            return
        with self.tx():
            if "jobs" not in self.db.table_names():
                self.db["jobs"].create({
                    "id": str, "folder": str, "fingerprint": str, "state": str, "stage": str,
                    "progress": float, "timings": str, "attempts": int, "error": str, "outputs": str,
                    "worker": str, "created": float, "started": float, "finished": float, "updated": float,
                }, pk="id", not_null={"folder", "state"}, defaults={"attempts": 0, "progress": 0.0})
                self.db["jobs"].create_index(["folder"], unique=True)
                self.db["jobs"].create_index(["state", "created"])
            if "events" not in self.db.table_names():
                self.db["events"].create({
                    "id": int, "job_id": str, "ts": float, "kind": str, "message": str, "data": str,
                }, pk="id")
                self.db["events"].create_index(["job_id", "id"])
            self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- writes -------------------------------------------------------------------------------------

    def _event(self, job_id: str | None, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.conn.execute(
            "INSERT INTO events (job_id, ts, kind, message, data) VALUES (?, ?, ?, ?, ?)",
            (job_id, time.time(), kind, message, json.dumps(data or {})),
        )

    def event(self, job_id: str | None, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        with self.tx():
            self._event(job_id, kind, message, data)

    def create_job(self, folder: str, fingerprint: str, state: JobState = JobState.QUEUED,
                   error: str | None = None) -> tuple[Job, bool]:
        """Insert a job for ``folder`` unless one exists. Returns (job, created)."""
        now = time.time()
        with self.tx() as c:
            row = c.execute("SELECT * FROM jobs WHERE folder = ?", (folder,)).fetchone()
            if row is not None:
                return Job.from_row(row), False
            base = slugify(folder)
            job_id, n = base, 1
            while c.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone():
                n += 1
                job_id = f"{base}-{n}"
            finished = now if state.terminal else None
            c.execute(
                "INSERT INTO jobs (id, folder, fingerprint, state, stage, progress, timings, attempts, error,"
                " outputs, worker, created, started, finished, updated)"
                " VALUES (?, ?, ?, ?, NULL, 0, '{}', 0, ?, '{}', NULL, ?, NULL, ?, ?)",
                (job_id, folder, fingerprint, state.value, error, now, finished, now),
            )
            self._event(job_id, "created", f"job created from inbox folder {folder!r} ({state.value})",
                        {"fingerprint": fingerprint})
            return Job.from_row(c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()), True

    def claim_next(self, worker: str) -> Job | None:
        """Atomically move the oldest queued job to running; None when the queue is empty."""
        now = time.time()
        with self.tx() as c:
            row = c.execute(
                "SELECT id FROM jobs WHERE state = ? ORDER BY created, id LIMIT 1", (JobState.QUEUED.value,)
            ).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE jobs SET state = ?, worker = ?, attempts = attempts + 1, started = COALESCE(started, ?),"
                " updated = ?, error = NULL WHERE id = ? AND state = ?",
                (JobState.RUNNING.value, worker, now, now, row["id"], JobState.QUEUED.value),
            )
            job = Job.from_row(c.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())
            self._event(job.id, "claimed", f"attempt {job.attempts} started on {worker}", {"worker": worker})
            return job

    def set_progress(self, job_id: str, stage: str, progress: float) -> None:
        with self.tx() as c:
            c.execute("UPDATE jobs SET stage = ?, progress = ?, updated = ? WHERE id = ?",
                      (stage, round(float(progress), 2), time.time(), job_id))

    def set_fingerprint(self, job_id: str, fingerprint: str) -> None:
        """The input folder's content as the job starts: it may have changed while the job waited (a slow copy)."""
        with self.tx() as c:
            c.execute("UPDATE jobs SET fingerprint = ?, updated = ? WHERE id = ?", (fingerprint, time.time(), job_id))
            self._event(job_id, "input", "the inbox folder changed while the job waited; it runs on the folder as "
                                         "it is now", {"fingerprint": fingerprint})

    def set_worker(self, job_id: str, worker: str, data: dict[str, Any] | None = None) -> None:
        """Where a claimed job actually runs (a remote executor knows only once the task has started)."""
        with self.tx() as c:
            c.execute("UPDATE jobs SET worker = ?, updated = ? WHERE id = ? AND state = ?",
                      (worker, time.time(), job_id, JobState.RUNNING.value))
            self._event(job_id, "worker", f"running on {worker}", data)

    def record_timing(self, job_id: str, stage: str, timing: dict[str, Any]) -> None:
        with self.tx() as c:
            row = c.execute("SELECT timings FROM jobs WHERE id = ?", (job_id,)).fetchone()
            timings = json.loads(row["timings"] or "{}") if row else {}
            # when it ended: the next stage began then (the CLI's time-left estimate, daemon/progress.py)
            timings[stage] = {**timing, "ended": round(time.time(), 3)}
            c.execute("UPDATE jobs SET timings = ?, updated = ? WHERE id = ?",
                      (json.dumps(timings), time.time(), job_id))
            self._event(job_id, "stage", f"stage {stage} {'skipped (checkpoint)' if timing.get('skipped') else 'done'}"
                        f" in {timing.get('seconds', 0):.2f}s", timing)

    def finish(self, job_id: str, state: JobState, error: str | None = None,
               outputs: dict[str, Any] | None = None, progress: float | None = None,
               expect: JobState | None = None) -> bool:
        """End a job. With ``expect``, only if it is still in that state (a change written late must not undo
        a newer one). Returns whether the row changed."""
        if not state.terminal:
            raise ValueError(f"finish() needs a terminal state, got {state}")
        now = time.time()
        with self.tx() as c:
            cur = c.execute(
                "UPDATE jobs SET state = ?, error = ?, outputs = COALESCE(?, outputs), finished = ?, updated = ?,"
                " progress = COALESCE(?, progress) WHERE id = ? AND (? IS NULL OR state = ?)",
                (state.value, error, json.dumps(outputs) if outputs is not None else None, now, now,
                 progress, job_id, expect and expect.value, expect and expect.value),
            )
            if cur.rowcount:
                self._event(job_id, state.value, error or f"job {state.value}")
            return bool(cur.rowcount)

    def requeue(self, job_id: str, reason: str, count_attempt: bool = True, expect: JobState | None = None) -> bool:
        """Back to the queue. ``count_attempt=False`` (a clean shutdown) gives the attempt back, in the same
        transaction. With ``expect``, only if the job is still in that state."""
        with self.tx() as c:
            cur = c.execute("UPDATE jobs SET state = ?, worker = NULL, updated = ?,"
                            " attempts = CASE WHEN ? THEN attempts ELSE MAX(attempts - 1, 0) END"
                            " WHERE id = ? AND (? IS NULL OR state = ?)",
                            (JobState.QUEUED.value, time.time(), count_attempt, job_id,
                             expect and expect.value, expect and expect.value))
            if cur.rowcount:
                self._event(job_id, "requeued", reason)
            return bool(cur.rowcount)

    def retry(self, job_id: str, reason: str, fingerprint: str | None = None, kind: str = "retry") -> bool:
        """Queue a finished job again (fresh attempt count). Only from a terminal state. ``fingerprint``: the
        input folder's content now, when it changed (the first stage's checkpoint key depends on it)."""
        now = time.time()
        terminal = tuple(s.value for s in JobState if s.terminal)
        with self.tx() as c:
            cur = c.execute(
                f"UPDATE jobs SET state = ?, attempts = 0, error = NULL, finished = NULL, worker = NULL, progress = 0,"
                f" fingerprint = COALESCE(?, fingerprint), updated = ?"
                f" WHERE id = ? AND state IN ({','.join('?' * len(terminal))})",
                (JobState.QUEUED.value, fingerprint, now, job_id, *terminal))
            if cur.rowcount:
                self._event(job_id, kind, reason, {"fingerprint": fingerprint} if fingerprint else None)
            return bool(cur.rowcount)

    def cancel_if_queued(self, job_id: str, reason: str) -> bool:
        now = time.time()
        with self.tx() as c:
            cur = c.execute("UPDATE jobs SET state = ?, error = ?, finished = ?, updated = ? WHERE id = ? AND state = ?",
                            (JobState.CANCELLED.value, reason, now, now, job_id, JobState.QUEUED.value))
            if cur.rowcount:
                self._event(job_id, "cancelled", reason)
            return bool(cur.rowcount)

    def recover_orphans(self, max_attempts: int) -> list[tuple[str, str]]:
        """Jobs left ``running`` by a dead daemon: requeue (resume from checkpoint) or fail.

        Called once at start-up while holding the daemon lock, so every running row is an orphan.
        """
        actions: list[tuple[str, str]] = []
        now = time.time()
        with self.tx() as c:
            rows = c.execute("SELECT id, attempts, stage FROM jobs WHERE state = ?", (JobState.RUNNING.value,)).fetchall()
            for r in rows:
                if r["attempts"] >= max_attempts:
                    msg = (f"interrupted {r['attempts']} times (last in stage {r['stage']!r}); giving up after "
                           f"jobs.max_attempts={max_attempts}. Check the job log for what killed it (out of memory?).")
                    c.execute("UPDATE jobs SET state = ?, error = ?, finished = ?, updated = ? WHERE id = ?",
                              (JobState.FAILED.value, msg, now, now, r["id"]))
                    self._event(r["id"], "failed", msg)
                    actions.append((r["id"], "failed"))
                else:
                    c.execute("UPDATE jobs SET state = ?, worker = NULL, updated = ? WHERE id = ?",
                              (JobState.QUEUED.value, now, r["id"]))
                    self._event(r["id"], "requeued",
                                f"daemon restarted while the job ran (stage {r['stage']!r}); resuming from the last checkpoint")
                    actions.append((r["id"], "requeued"))
        return actions

    # -- reads --------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def by_folder(self, folder: str) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE folder = ?", (folder,))
        return Job.from_row(rows[0]) if rows else None

    def jobs(self, state: JobState | None = None) -> list[Job]:
        if state is None:
            rows = self._read("SELECT * FROM jobs ORDER BY created, id")
        else:
            rows = self._read("SELECT * FROM jobs WHERE state = ? ORDER BY created, id", (state.value,))
        return [Job.from_row(r) for r in rows]

    def known_folders(self) -> set[str]:
        return {r[0] for r in self._read("SELECT folder FROM jobs")}

    def folders(self) -> dict[str, FolderJob]:
        """Inbox folder -> its job's id, state and fingerprint: the intake's per-scan view (no JSON decoding)."""
        return {r["folder"]: FolderJob(r["id"], JobState(r["state"]), r["fingerprint"] or "")
                for r in self._read("SELECT folder, id, state, fingerprint FROM jobs")}

    def events(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._read("SELECT * FROM events WHERE job_id = ? ORDER BY id", (job_id,))
        return [dict(r) | {"data": json.loads(r["data"] or "{}")} for r in rows]

    def latest_events(self, kind: str) -> dict[str, dict[str, Any]]:
        """Job id -> the data of its latest event of ``kind``."""
        rows = self._read("SELECT job_id, data FROM events WHERE id IN (SELECT MAX(id) FROM events WHERE kind = ?"
                          " AND job_id IS NOT NULL GROUP BY job_id)", (kind,))
        return {r["job_id"]: json.loads(r["data"] or "{}") for r in rows}

    def daemon_event_data(self, kind: str) -> list[dict[str, Any]]:
        """The data of every event of ``kind`` that belongs to no job (e.g. the inbox links refused), oldest first."""
        return [json.loads(r["data"] or "{}") for r in
                self._read("SELECT data FROM events WHERE kind = ? AND job_id IS NULL ORDER BY id", (kind,))]

    def latest_event_rows(self, kind: str) -> dict[str, dict[str, Any]]:
        """Job id -> its latest event of ``kind`` (ts, message, data): e.g. the re-drop notice `hotmesh status`
        shows."""
        rows = self._read("SELECT job_id, ts, message, data FROM events WHERE id IN (SELECT MAX(id) FROM events WHERE"
                          " kind = ? AND job_id IS NOT NULL GROUP BY job_id)", (kind,))
        return {r["job_id"]: {"ts": r["ts"], "message": r["message"], "data": json.loads(r["data"] or "{}")}
                for r in rows}

    def counts(self) -> dict[str, int]:
        rows = self._read("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    # -- upkeep -------------------------------------------------------------------------------------

    def backup(self, dest: Path | None = None) -> Path:
        """A consistent copy of the ledger (SQLite's online backup), replaced atomically: what `hotmesh ledger
        rebuild --from-backup` starts from. Raises OSError / LedgerError when it cannot be written."""
        dest = Path(dest) if dest is not None else self.path.with_name(self.path.name + BACKUP_SUFFIX)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            target = sqlite3.connect(str(tmp))
            try:
                self.conn.backup(target)
            finally:
                target.close()
        except sqlite3.Error as e:
            tmp.unlink(missing_ok=True)
            raise classify(e, dest, "written") from None
        os.replace(tmp, dest)
        return dest

    def restore_job(self, row: dict[str, Any], source: str) -> None:
        """Insert one job rebuilt from files (`hotmesh ledger rebuild`), with an event saying where it came from."""
        cols = ("id", "folder", "fingerprint", "state", "stage", "progress", "timings", "attempts", "error",
                "outputs", "worker", "created", "started", "finished", "updated")
        with self.tx() as c:
            c.execute(f"INSERT OR REPLACE INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                      tuple(row.get(k) for k in cols))
            self._event(row["id"], "rebuilt", f"job restored into a rebuilt ledger from {source}", {"source": source})
