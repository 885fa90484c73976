"""Inbox intake: decide when a dropped folder has settled and becomes exactly one job.

watchdog events only wake the scanner early; the scanner itself (also run periodically by apscheduler,
since events are lost on network and bind-mounted volumes) compares size+mtime snapshots.

A folder copied slowly (pauses longer than ``intake.settle_seconds``) must not become a job after its first
file: while its ``transforms.json`` lists files that are not there yet, the folder is not settled until it has
been quiet for ``intake.missing_files_seconds``. And the folder of a finished job can be offered again when its
content changes (``baselines``): the daemon decides what that means (a failed job runs again; a done or
cancelled one is not reprocessed, and the user is told why).
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from pipeline.context import CANCEL_MARKER, READY_MARKER
from pipeline.io.files import printable

log = logging.getLogger("hotmesh.intake")


def snapshot(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Sorted (relative path, size, mtime_ns) of every file under ``folder`` (symlinks not followed, not even
    ``folder`` itself: a linked job folder is refused, and nothing behind the link is looked at)."""
    entries: list[tuple[str, int, int]] = []
    if folder.is_symlink():
        return ()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            p = Path(root) / name
            try:
                st = p.lstat()
            except OSError:  # vanished while we looked: the copy is still going on
                continue
            entries.append((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


def changed_within(folder: Path, start: float, end: float) -> bool:
    """Whether any file or folder under ``folder`` (itself included) was created or changed between the wall-clock
    times ``start`` and ``end``, by its ctime (which, unlike the mtime, a copy that preserves times cannot set):
    lstat only, links not followed."""
    if folder.is_symlink():
        return False
    for root, dirs, files in os.walk(folder):
        for name in [".", *dirs, *files]:
            try:
                ctime = (Path(root) / name).lstat().st_ctime
            except OSError:
                continue
            if start <= ctime <= end:
                return True
    return False


def fingerprint(snap: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for rel, size, mtime in snap:
        if rel in (READY_MARKER, CANCEL_MARKER):
            continue
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:32]


def is_candidate(p: Path) -> bool:
    """Job folders: visible directories (names starting with '.' or '_' are ours or the user's scratch), by
    lstat: a symbolic link to a folder is not one (see :func:`is_linked_folder`)."""
    try:
        mode = p.lstat().st_mode
    except OSError:  # vanished meanwhile
        return False
    return stat.S_ISDIR(mode) and not p.name.startswith((".", "_"))


def is_linked_folder(p: Path) -> bool:
    """A visible inbox entry that is a symbolic link to a folder: refused (its files are outside the inbox). Only
    stats the target; nothing behind the link is listed or opened."""
    return not p.name.startswith((".", "_")) and p.is_symlink() and p.is_dir()


def linked_folder_message(name: str) -> str:
    """What a user who linked a folder into the inbox is told (log line and ledger event)."""
    return (f"the inbox entry {shown(name)} is a symbolic link to a folder, and hotmesh reads no file outside the "
            f"inbox, so it is not a job and nothing behind the link was opened. Copy the folder into the inbox "
            f"instead of linking it (copy it next to the inbox, then move it in with one rename), and remove the link")


def shown(name: str) -> str:
    """A file or folder name for a log line: quoted, with control characters escaped, so a name holding a
    newline cannot split a log line or forge another one."""
    return f"'{printable(name)}'"


@dataclass
class Pending:
    snap: tuple[tuple[str, int, int], ...]
    since: float


def missing_frames(folder: Path) -> int:
    """How many files the folder's transforms.json lists that are not there (yet). 0 when there is no such
    file or it cannot be parsed: ingest explains those problems. Only stats the listed paths (never reads
    them), so a path pointing elsewhere is not opened here."""
    from pipeline.cameras.cameras import find_pose_source, read_transforms
    from pipeline.context import InputError
    from pipeline.io.images import inside

    try:
        src = find_pose_source(folder)
        if src is None or not src.is_file() or not inside(src, folder):
            return 0  # no poses, a COLMAP model (its images are checked at ingest), or a link ingest refuses
        return len(read_transforms(src).missing)
    except (InputError, OSError, ValueError):
        return 0


def dir_stamp(folder: Path) -> tuple[tuple[str, int, int], ...] | None:
    """(name, inode, mtime_ns) of a folder and its direct subfolders (images/, masks/): changes when files are
    added, removed or renamed there, or the folder is replaced, at the cost of a few stats rather than one per
    file. None when the folder is gone."""
    try:
        st = folder.lstat()
        out = [(".", st.st_ino, st.st_mtime_ns)]
        with os.scandir(folder) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    sub = e.stat(follow_symlinks=False)
                    out.append((e.name, sub.st_ino, sub.st_mtime_ns))
    except OSError:
        return None
    return tuple(sorted(out))


@dataclass(frozen=True)
class Decision:
    folder: str
    fingerprint: str
    cancelled: bool  # a CANCEL file arrived before the folder became a job
    changed: bool = False  # a finished job's folder whose content differs from its baseline, settled again


@dataclass
class Settler:
    """Tracks folders that are not jobs yet. In memory only: after a restart a folder simply settles again."""

    settle_seconds: float
    missing_files_seconds: float = 60.0
    pending: dict[str, Pending] = field(default_factory=dict)
    linked: set[str] = field(default_factory=set)  # inbox entries that are links to folders, at the last scan

    def scan(self, inbox: Path, known: set[str], now: float | None = None,
             baselines: Mapping[str, str] | None = None) -> list[Decision]:
        """Folders that became ready. ``known``: folders that are jobs already (skipped); ``baselines``: some of
        them, with the fingerprint to compare against, offered again (``changed=True``) once their content
        differs and has settled."""
        now = time.monotonic() if now is None else now
        baselines = baselines or {}
        ready: list[Decision] = []
        seen: set[str] = set()
        try:
            entries = sorted(inbox.iterdir())
        except FileNotFoundError:
            return []
        self.linked = {p.name for p in entries if is_linked_folder(p)}
        for p in entries:
            base = baselines.get(p.name)
            if not is_candidate(p) or (p.name in known and base is None):
                continue
            seen.add(p.name)
            snap = snapshot(p)
            if base is not None and fingerprint(snap) == base:
                self.pending.pop(p.name, None)  # unchanged (or changed back)
                continue
            decision = self._consider(p, snap, now, changed=base is not None)
            if decision is not None:
                ready.append(decision)
                self.pending.pop(p.name, None)
        for gone in set(self.pending) - seen:  # folder removed or became a job
            self.pending.pop(gone, None)
        return ready

    def _consider(self, p: Path, snap: tuple[tuple[str, int, int], ...], now: float, changed: bool) -> Decision | None:
        names = {rel for rel, _, _ in snap}
        if CANCEL_MARKER in names:
            return Decision(p.name, fingerprint(snap), cancelled=True, changed=changed)
        prev = self.pending.get(p.name)
        if prev is None or prev.snap != snap:
            self.pending[p.name] = Pending(snap, now)
            prev = self.pending[p.name]
        quiet = now - prev.since
        # READY means "start now" for a new drop; a finished job's folder changing again always settles
        if READY_MARKER in names and not changed:
            return Decision(p.name, fingerprint(snap), cancelled=False)
        if not snap or quiet < self.settle_seconds:
            return None
        if quiet < self.missing_files_seconds and missing_frames(p):
            return None  # listed frames still missing: more files are probably on their way
        return Decision(p.name, fingerprint(snap), cancelled=False, changed=changed)


def redrop_notice(job_id: str, state: str, folder: str) -> str:
    """What a user who re-dropped a finished job's folder with new content is told (log, event, status file)."""
    return (f"the inbox folder {shown(folder)} changed after its job {job_id} was {state}; a finished job is "
            f"not processed again by itself. To process the new content, run `hotmesh retry {job_id}` (it reruns "
            f"with the new files), or drop the folder under a new name (e.g. {printable(folder)}-2)")
