"""`hotmesh ledger check | rebuild`: what to do when ledger.db is damaged.

The ledger is the source of truth, but not the only record: every job's last state is also in its status file
(``outbox/_status/<job>.json``, written at every change) and, once it ended, in its report
(``outbox/<job>/stats.json``); checkpoints live in ``state/jobs/<job>/``; and the daemon keeps a backup
(``state/ledger.db.bak``, at start and with every retention run). ``rebuild`` moves the damaged file aside
(never deletes it), optionally starts from the backup, and restores every job those files know of that is
missing or older in the new ledger. Inbox folders it cannot place become jobs again the usual way, with the same
id, so their checkpoints are reused.
"""
from __future__ import annotations

import fcntl
import json
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.intake import fingerprint, is_candidate, snapshot
from daemon.ledger import BACKUP_SUFFIX, Ledger
from daemon.states import JobState
from daemon.worker import Paths
from pipeline.io.publish import STATUS_DIR


class RepairError(Exception):
    """The repair cannot go ahead; ``str(e)`` says why and what to do."""


@dataclass(frozen=True)
class LedgerCheck:
    path: Path
    ok: bool
    problems: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)


def check_ledger(path: Path) -> LedgerCheck:
    """Open ``path`` read-only and run SQLite's integrity check; never writes, never raises for a bad file."""
    if not path.exists():
        return LedgerCheck(path, False, (f"{path} does not exist",))
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as e:
        return LedgerCheck(path, False, (f"cannot be opened: {e}",))
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        problems = [r for r in rows if r != "ok"]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = {"jobs", "events"} - tables
        if missing:
            problems.append(f"table(s) {', '.join(sorted(missing))} missing")
        counts = {} if missing else {r[0]: r[1] for r in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
        return LedgerCheck(path, not problems, tuple(problems), counts)
    except sqlite3.Error as e:
        return LedgerCheck(path, False, (str(e),))
    finally:
        conn.close()


def backup_path(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.name + BACKUP_SUFFIX)


def daemon_running(state: Path) -> bool:
    """True when a daemon holds the state folder's lock (so the ledger must not be replaced under it)."""
    lock = state / "daemon.lock"
    if not lock.exists():
        return False
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _row(d: dict[str, Any], fp: str, now: float) -> dict[str, Any] | None:
    """A jobs-table row from a status file's or report's job fields; None when they are unusable."""
    try:
        state = JobState(d["state"])
        job_id, folder = str(d["id"]), str(d["folder"])
    except (KeyError, ValueError, TypeError):
        return None
    resumable = not state.terminal  # it was queued or running: queue it, it resumes from its checkpoints
    return {"id": job_id, "folder": folder, "fingerprint": fp,
            "state": JobState.QUEUED.value if resumable else state.value, "stage": d.get("stage"),
            "progress": float(d.get("progress") or 0.0), "timings": json.dumps(d.get("timings") or {}),
            "attempts": int(d.get("attempts") or 0), "error": d.get("error"),
            "outputs": json.dumps(d.get("outputs") or {}), "worker": None,
            "created": d.get("created") or now, "started": d.get("started"),
            "finished": None if resumable else (d.get("finished") or now), "updated": d.get("updated") or now}


def rows_from_folders(paths: Paths) -> list[tuple[dict[str, Any], str]]:
    """(row, source) for every job the outbox knows of: its status file, else its published stats.json."""
    now = time.time()
    found: dict[str, tuple[dict[str, Any], str]] = {}

    def folder_fp(folder: str) -> str:
        p = paths.inbox / folder
        return fingerprint(snapshot(p)) if p.is_dir() else ""

    status_dir = paths.outbox / STATUS_DIR
    for f in sorted(status_dir.glob("*.json")) if status_dir.is_dir() else []:
        if f.name.startswith(("_", ".")):
            continue
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        row = _row(d, folder_fp(str(d.get("folder", ""))), now) if isinstance(d, dict) else None
        if row is not None:
            found[row["id"]] = (row, f"status file {f.name}")
    for stats in sorted(paths.outbox.glob("*/stats.json")) if paths.outbox.is_dir() else []:
        if not is_candidate(stats.parent):
            continue
        try:
            job = json.loads(stats.read_text()).get("job") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if not isinstance(job, dict) or job.get("id") in found:
            continue
        ended = stats.stat().st_mtime
        job = dict(job, outputs={"outbox": str(stats.parent), "report": str(stats.parent / "report.html")},
                   created=ended, finished=ended, updated=ended)
        row = _row(job, folder_fp(str(job.get("folder", ""))), now)
        if row is not None:
            found[row["id"]] = (row, f"report {stats.parent.name}/stats.json")
    return list(found.values())


@dataclass
class RebuildReport:
    moved_aside: list[str]
    from_backup: bool
    restored: dict[str, int]
    skipped: list[str]
    total: dict[str, int]


def rebuild_ledger(paths: Paths, from_backup: bool = False) -> RebuildReport:
    """Replace the (damaged or missing) ledger by one rebuilt from the backup and/or the outbox's files."""
    ledger_path = paths.ledger
    if daemon_running(paths.state):
        raise RepairError(f"a hotmesh daemon is running on {paths.state}; stop it first (SIGTERM), then rebuild")
    bak = backup_path(ledger_path)
    if from_backup:
        check = check_ledger(bak)
        if not check.ok:
            raise RepairError(f"the backup {bak} cannot be used ({'; '.join(check.problems)}); rebuild without "
                              f"--from-backup, from the outbox and state folders only")
    moved: list[str] = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        src = ledger_path.with_name(ledger_path.name + suffix)
        if src.exists():
            dst = ledger_path.with_name(f"{ledger_path.name}.damaged-{stamp}{suffix}")
            src.rename(dst)
            moved.append(dst.name)
    if from_backup:
        shutil.copy2(bak, ledger_path)
    ledger = Ledger(ledger_path)
    restored: dict[str, int] = {}
    skipped: list[str] = []
    try:
        owners = {f: j.id for f, j in ledger.folders().items()}
        for row, source in rows_from_folders(paths):
            current = ledger.get(row["id"])
            if current is not None and (current.updated or 0) >= (row["updated"] or 0):
                continue  # the backup is as new as the file
            owner = owners.get(row["folder"])
            if owner is not None and owner != row["id"]:
                skipped.append(f"{row['id']} (folder {row['folder']!r} belongs to {owner})")
                continue
            ledger.restore_job(row, source)
            owners[row["folder"]] = row["id"]
            restored[row["state"]] = restored.get(row["state"], 0) + 1
        ledger.event(None, "rebuilt", f"ledger rebuilt{' from the backup and' if from_backup else ' from'} the "
                                      f"outbox and state folders; damaged file kept as {', '.join(moved) or '(none)'}")
        total = ledger.counts()
    finally:
        ledger.close()
    return RebuildReport(moved, from_backup, restored, skipped, total)
