"""Atomic publishing: build outbox/.<job>.publishing-<rand>/ on the same volume, then rename it into place."""
from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

STATUS_DIR = "_status"
PUBLISHING = ".publishing-"
OLD = ".old-"
# An outbox that is briefly unwritable (permissions being fixed, `chattr +i`, a remount) is waited for this long
# before the publish counts as failed: a job that has done all its work should not be lost to a blip.
PUBLISH_RETRY_SECONDS = 60.0
_TRANSIENT = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EBUSY}

log = logging.getLogger("hotmesh.publish")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_once(fill: Callable[[Path], None], outbox: Path, job_id: str) -> Path:
    outbox.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = outbox / f".{job_id}{PUBLISHING}{tag}"
    tmp.mkdir()
    try:
        fill(tmp)
        _fsync_dir(tmp)
        final = outbox / job_id
        if final.exists():
            old = outbox / f".{job_id}{OLD}{tag}"
            final.rename(old)
            try:
                tmp.rename(final)
            except BaseException:
                try:
                    old.rename(final)  # put the previous result back: never leave the job without one
                except OSError:
                    pass  # the next attempt (or the daemon's clean-up) restores it
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(outbox)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _with_retry(attempt: Callable[[], Path], retry_seconds: float, check: Callable[[], None] | None,
                outbox: Path, job_id: str) -> Path:
    """``attempt()``, again every second while the outbox refuses writes (permission-type errors only: a full
    disk or a bad file name does not fix itself in a minute), for at most ``retry_seconds``."""
    deadline = time.monotonic() + retry_seconds
    warned = False
    while True:
        try:
            if warned:
                remove_stale_partials(outbox, job_id)  # what a failed attempt may have left (only this job's)
            return attempt()
        except OSError as e:
            if e.errno not in _TRANSIENT or time.monotonic() >= deadline:
                raise
            if not warned:
                warned = True
                log.warning("the outbox refuses writes (%s); trying again for up to %.0f s", e, retry_seconds)
            if check is not None:
                check()  # a CANCEL or shutdown still stops the job while it waits
            time.sleep(1.0)


def publish(files: dict[str, Path], outbox: Path, job_id: str, retry_seconds: float = 0.0,
            check: Callable[[], None] | None = None) -> Path:
    """Copy ``files`` ({name in outbox: source path}) to ``outbox/<job_id>/`` in one visible step.

    Readers see either no folder, the previous complete folder, or the new complete folder: never a partial
    one. A previous result is swapped out by two renames and then deleted. ``retry_seconds``: how long to keep
    trying while the outbox is unwritable.
    """
    for name in files:
        parts = name.split("/")
        # relative paths inside the job's folder only (images/, sparse/0/): no absolute, hidden or parent parts
        if name.startswith("/") or any(not p or p.startswith(".") for p in parts):
            raise ValueError(f"publish: bad file name {name!r}")

    def fill(tmp: Path) -> None:
        for name, src in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / name)
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())

    return _with_retry(lambda: _publish_once(fill, outbox, job_id), retry_seconds, check, outbox, job_id)


def publish_built(build: Callable[[Path], None], outbox: Path, job_id: str, retry_seconds: float = 0.0,
                  check: Callable[[], None] | None = None) -> Path:
    """Like :func:`publish`, but ``build(folder)`` writes the files straight into the folder that becomes
    ``outbox/<job_id>/``: a failure report needs no space on the state volume, which may be the full one."""
    return _with_retry(lambda: _publish_once(build, outbox, job_id), retry_seconds, check, outbox, job_id)


def remove_stale_partials(outbox: Path, job_id: str | None = None) -> list[str]:
    """Clean up after a process killed during publish (they were never visible as results): half-built
    folders are deleted; a previous result moved aside is put back where the new one never arrived; a status
    file's temporary copy is deleted. ``job_id``: only that job's (other jobs may be publishing right now).
    Best effort: what cannot be removed now (an unwritable outbox) is left for the next call."""
    removed: list[str] = []
    if not outbox.is_dir():
        return removed
    prefix = f".{job_id}" if job_id is not None else "."
    for p in sorted(outbox.iterdir()):
        if not p.name.startswith(prefix) or not p.is_dir():
            continue
        for marker in (PUBLISHING, OLD):
            if marker not in p.name:
                continue
            owner = p.name[1:p.name.rindex(marker)]
            if job_id is not None and owner != job_id:
                continue
            final = outbox / owner
            if marker == OLD and not final.exists():
                try:
                    p.rename(final)
                except OSError:
                    continue  # still unwritable: the next clean-up tries again
                removed.append(f"{p.name} (restored as {owner})")
            else:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    status = outbox / STATUS_DIR
    if status.is_dir():
        pattern = f".{job_id}.json.*.tmp" if job_id is not None else ".*.tmp"
        for p in status.glob(pattern):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                continue
            removed.append(f"{STATUS_DIR}/{p.name}")
    return removed


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` atomically (readers never see a half-written file); no temporary file is left behind
    when it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
