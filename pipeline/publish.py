"""Atomic publishing: build outbox/.<job>.publishing-<rand>/ on the same volume, then rename it into place."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

STATUS_DIR = "_status"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(files: dict[str, Path], outbox: Path, job_id: str) -> Path:
    """Copy ``files`` ({name in outbox: source path}) to ``outbox/<job_id>/`` in one visible step.

    Readers see either no folder, the previous complete folder, or the new complete folder: never a partial
    one. A previous result is swapped out by two renames and then deleted.
    """
    outbox.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = outbox / f".{job_id}.publishing-{tag}"
    tmp.mkdir()
    try:
        for name, src in files.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"publish: bad file name {name!r}")
            shutil.copy2(src, tmp / name)
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        final = outbox / job_id
        if final.exists():
            old = outbox / f".{job_id}.old-{tag}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(outbox)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_partials(outbox: Path) -> list[str]:
    """Delete half-built folders left by a crash during publish (they were never visible as results)."""
    removed = []
    if outbox.is_dir():
        for p in outbox.iterdir():
            if p.name.startswith(".") and (".publishing-" in p.name or ".old-" in p.name) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` atomically (readers never see a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
