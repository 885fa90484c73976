"""The daemon's two exclusive locks: one per state folder (state/daemon.lock) and one per inbox
(inbox/.hotmesh.lock). Both are flocks, so the kernel drops them when the process dies: a crashed daemon leaves
nothing to clean up."""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

log = logging.getLogger("hotmesh.daemon")
INBOX_LOCK = ".hotmesh.lock"  # in the inbox: hidden (a leading '.'), so never taken for a job folder


class AlreadyRunning(RuntimeError):
    """Another daemon holds the state folder or the inbox; the message says which and what to do."""


class DaemonLocks:
    """Held from :meth:`acquire` to :meth:`release`: the state folder's lock first, then the inbox's."""

    def __init__(self, state: Path, inbox: Path) -> None:
        self.state, self.inbox = state, inbox
        self._state_fh: IO[str] | None = None
        self._inbox_fd: int | None = None  # inbox/.hotmesh.lock (or the inbox folder), flocked

    def acquire(self) -> None:
        """Both locks, or neither: a refused inbox frees the state folder again for whoever holds the inbox.
        Raises :class:`AlreadyRunning`."""
        self._lock_state()
        try:
            self._lock_inbox()
        except AlreadyRunning:
            self.release()
            raise

    def release(self) -> None:
        if self._inbox_fd is not None:
            os.close(self._inbox_fd)
            self._inbox_fd = None
        if self._state_fh is not None:
            self._state_fh.close()
            self._state_fh = None

    def _lock_state(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        path = self.state / "daemon.lock"
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise AlreadyRunning(f"another hotmesh daemon already uses the state folder {self.state}; stop it "
                                 f"first, or give this one another --state") from None
        self._state_fh = fh
        try:  # the pid is for people; the lock is what matters, so a full disk must not stop the start
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
        except OSError as e:
            log.warning("could not write the pid into %s: %s", path, e)

    def _lock_inbox(self) -> None:
        """One inbox, one daemon: two daemons on one inbox with different state folders each made a job of every
        folder (the second re-ran all the first had done). A read-only inbox, where the lock file cannot be made, is
        locked through its directory instead."""
        path = self.inbox / INBOX_LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            log.warning("cannot create %s (%s); locking the inbox folder itself", path, e.strerror or e)
            fd = os.open(self.inbox, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(f"another hotmesh daemon already watches the inbox {self.inbox} (it holds "
                                 f"{path}); stop it first, or give this one another --inbox. One inbox has one "
                                 f"daemon: a second one would process the same folders again") from None
        self._inbox_fd = fd
