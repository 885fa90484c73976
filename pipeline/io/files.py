"""Opening a job folder's files without ever blocking on one.

A job folder is user input: besides files and folders it can hold named pipes (FIFOs), sockets and device nodes.
Opening a FIFO for reading blocks until a writer appears (forever, for an abandoned one), and reading a device can
block or never end. So everything that looks at a file's contents goes through :func:`open_regular`: the kind is
checked with ``lstat`` before any open, and the open itself is non-blocking and checked again with ``fstat`` (the
entry may be swapped for a FIFO between the two).
"""
from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO

_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"))


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(text: str) -> str:
    """``text`` with control characters escaped (a newline becomes the two characters \\n): a file or folder name
    in a log line cannot split it or forge another one."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class NotRegularFile(OSError):
    """The path is not a regular file (a FIFO, socket, device, a folder, or a link where none may be followed)."""


def kind_of(mode: int) -> str:
    """What an ``st_mode`` is, in words ("a regular file", "a named pipe (FIFO)", ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def is_special(mode: int) -> bool:
    """A FIFO, socket or device: something that is neither a regular file, a folder nor a link."""
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


def special_reason(mode: int) -> str:
    """Why a special entry of a job folder is not used, and what to do (for the report's "Files not used")."""
    return (f"is {kind_of(mode)}, not a regular file, and is never opened (it could block the job forever); "
            f"remove it from the folder")


def regular_file(path: Path, follow: bool = True) -> bool:
    """Whether ``path`` is a regular file, by ``stat`` (or ``lstat`` when ``follow`` is False): nothing is opened."""
    try:
        st = path.stat() if follow else path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode)


def open_regular(path: Path, follow: bool = True) -> BinaryIO:
    """``open(path, "rb")`` for a regular file only, and one that never blocks: :class:`NotRegularFile` for
    anything else. ``follow=False`` also refuses a symbolic link (O_NOFOLLOW)."""
    if not regular_file(path, follow):  # the cheap check: a FIFO is not even opened
        try:
            mode = path.stat().st_mode if follow else path.lstat().st_mode
        except OSError as e:
            raise e from None
        raise NotRegularFile(f"{path} is {kind_of(mode)}, not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)  # O_NONBLOCK: a FIFO swapped in after the check opens without waiting for a writer
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{path} is {kind_of(st.st_mode)}, not a regular file")
        os.set_blocking(fd, True)  # a regular file: ordinary reads from here on
        return io.open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_head(path: Path, n: int = 16, follow: bool = True) -> bytes:
    """The first ``n`` bytes of a regular file; b"" for anything that cannot or must not be read."""
    try:
        with open_regular(path, follow) as fh:
            return fh.read(n)
    except OSError:
        return b""
