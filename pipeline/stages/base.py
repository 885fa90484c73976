"""Stage protocol and the on-disk checkpoints that make resume and rerun-from free (ODM style)."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from pipeline.context import JobContext

DONE_MARKER = "_done.json"


class Stage(ABC):
    """One pipeline step. ``run`` writes its outputs into ``out_dir`` and returns a small JSON summary.

    A stage only reads earlier stages' outputs through their ``load`` helpers, never through shared dicts.
    ``sections`` are the config sections whose values change its output: editing one of them invalidates
    this stage and every stage after it.
    """

    name: ClassVar[str]
    sections: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def run(self, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
        ...


def stage_dir(ctx: JobContext, name: str) -> Path:
    return ctx.work_dir / "stages" / name


def chain_hash(previous: str, stage: Stage, ctx: JobContext, fingerprint: str) -> str:
    """Checkpoint key: previous stage's key + this stage's config sections (+ the input, for the first)."""
    h = hashlib.sha256()
    h.update(previous.encode())
    h.update(stage.name.encode())
    h.update(ctx.settings.section_hash(stage.sections).encode())
    h.update(fingerprint.encode())
    return h.hexdigest()[:16]


def checkpoint_valid(path: Path, key: str) -> bool:
    marker = path / DONE_MARKER
    try:
        return json.loads(marker.read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def read_summary(path: Path) -> dict[str, Any]:
    return json.loads((path / DONE_MARKER).read_text()).get("summary", {})


def commit_checkpoint(tmp: Path, final: Path, key: str, summary: dict[str, Any]) -> None:
    """Mark ``tmp`` complete and move it into place; the rename makes the checkpoint all-or-nothing."""
    (tmp / DONE_MARKER).write_text(json.dumps({"key": key, "summary": summary, "finished": time.time()}))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
