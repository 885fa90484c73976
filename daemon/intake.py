"""Inbox intake: decide when a dropped folder has settled and becomes exactly one job.

watchdog events only wake the scanner early; the scanner itself (also run periodically by apscheduler,
since events are lost on network and bind-mounted volumes) compares size+mtime snapshots.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.context import CANCEL_MARKER, READY_MARKER

log = logging.getLogger("hotmesh.intake")


def snapshot(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Sorted (relative path, size, mtime_ns) of every file under ``folder`` (symlinks not followed)."""
    entries = []
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


def fingerprint(snap: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for rel, size, mtime in snap:
        if rel in (READY_MARKER, CANCEL_MARKER):
            continue
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:32]


def is_candidate(p: Path) -> bool:
    """Job folders: visible directories (names starting with '.' or '_' are ours or the user's scratch)."""
    return p.is_dir() and not p.name.startswith((".", "_"))


@dataclass
class Pending:
    snap: tuple[tuple[str, int, int], ...]
    since: float


@dataclass(frozen=True)
class Decision:
    folder: str
    fingerprint: str
    cancelled: bool  # a CANCEL file arrived before the folder became a job


@dataclass
class Settler:
    """Tracks folders that are not jobs yet. In memory only: after a restart a folder simply settles again."""

    settle_seconds: float
    pending: dict[str, Pending] = field(default_factory=dict)

    def scan(self, inbox: Path, known: set[str], now: float | None = None) -> list[Decision]:
        now = time.monotonic() if now is None else now
        ready: list[Decision] = []
        seen: set[str] = set()
        try:
            entries = sorted(inbox.iterdir())
        except FileNotFoundError:
            return []
        for p in entries:
            if not is_candidate(p) or p.name in known:
                continue
            seen.add(p.name)
            snap = snapshot(p)
            names = {rel for rel, _, _ in snap}
            if CANCEL_MARKER in names:
                ready.append(Decision(p.name, fingerprint(snap), cancelled=True))
                self.pending.pop(p.name, None)
                continue
            prev = self.pending.get(p.name)
            if prev is None or prev.snap != snap:
                self.pending[p.name] = Pending(snap, now)
                prev = self.pending[p.name]
            settled = bool(snap) and now - prev.since >= self.settle_seconds
            if READY_MARKER in names or settled:
                ready.append(Decision(p.name, fingerprint(snap), cancelled=False))
                self.pending.pop(p.name, None)
        for gone in set(self.pending) - seen:  # folder removed or became a job
            self.pending.pop(gone, None)
        return ready
