"""Fault injection shared by tests/test_hardening.py and bench/chaos.py: a small tmpfs that can be filled, an
immutable folder (`chattr +i`), and a watch that records every file opened under a folder (inotify), from any
process. tmpfs and chattr need root; where the kernel refuses, the caller skips with the reason."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
from pathlib import Path
from typing import Iterator

from watchdog.events import FileOpenedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver


class FaultUnavailable(RuntimeError):
    """This machine cannot inject the fault (not root, no tmpfs, no chattr): skip, saying why."""


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """A fresh tmpfs of ``size_mb`` mounted at ``path`` for the block; unmounted (lazily) afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise FaultUnavailable(f"cannot mount a tmpfs (needs root): {r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(volume: Path, name: str = "filler") -> Path:
    """Fill the volume holding ``volume`` to the last byte (what `dd if=/dev/zero` does); returns the file,
    whose removal gives the space back."""
    target = volume / name
    chunk = b"\0" * (1 << 20)
    with open(target, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
        try:  # the last partial megabyte too
            while True:
                fh.write(b"\0" * 4096)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return target


def set_immutable(path: Path, on: bool) -> None:
    r = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise FaultUnavailable(f"chattr {'+' if on else '-'}i refused (needs root and a file system with "
                               f"attributes): {r.stderr.strip()}")


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[Path]:
    """``path`` (a folder) cannot be changed by anyone, root included, for the block."""
    set_immutable(path, True)
    try:
        yield path
    finally:
        set_immutable(path, False)


class _Opens(FileSystemEventHandler):
    def __init__(self) -> None:
        self.files: list[str] = []
        self.lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileOpenedEvent) and not event.is_directory:
            with self.lock:
                self.files.append(str(event.src_path))


class OpenWatch:
    """Every file opened under ``root`` (through any path: a symlink, an absolute path) by any process while it
    runs. ``files`` is the list so far. Needs inotify (Linux)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.handler = _Opens()
        self.observer = InotifyObserver()

    @property
    def files(self) -> list[str]:
        with self.handler.lock:
            return list(self.handler.files)

    def __enter__(self) -> "OpenWatch":
        self.observer.schedule(self.handler, str(self.root), recursive=True)
        self.observer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.settle()
        self.observer.stop()
        self.observer.join(timeout=5)

    @staticmethod
    def settle() -> None:
        """inotify events arrive asynchronously: give the last ones time to be read."""
        threading.Event().wait(0.5)


def hidden_entries(outbox: Path) -> list[str]:
    """Names left half-done in an outbox: hidden folders (publishing, old results) and status temp files."""
    out = [p.name for p in outbox.iterdir() if p.name.startswith(".")] if outbox.is_dir() else []
    status = outbox / "_status"
    if status.is_dir():
        out += [f"_status/{p.name}" for p in status.iterdir() if p.name.startswith(".")]
    return sorted(out)


def can_inject() -> str | None:
    """None when tmpfs and chattr are available here, else why not (for a skip reason)."""
    if os.geteuid() != 0:
        return "needs root (tmpfs mounts and chattr +i)"
    return None
