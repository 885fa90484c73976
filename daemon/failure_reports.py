"""The report of a job that ended without its worker writing one (cancelled while queued, a crashed or lost
worker): what failed, the job's log, and for a failed job what its photos show."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from daemon.config import Settings
from daemon.ledger import Job
from daemon.states import JobState
from daemon.worker import Paths

log = logging.getLogger("hotmesh.daemon")


def failure_report_builder(paths: Paths, settings: Settings, job: Job, message: str,
                           end: JobState) -> Callable[[Path], None]:
    """A function that writes ``job``'s report (ended in ``end`` with ``message``) into the folder it is given,
    for :func:`pipeline.io.publish.publish_built`."""
    from pipeline.report.diagnostics import photo_diagnostics
    from pipeline.report.failure import write_failure_report
    from pipeline.io.redact import scrub

    def build(out: Path) -> None:
        timings = [t for t in job.timings.values()]
        log_file = paths.work_dir(job.id) / "job.log"
        # failed without its worker (crashed, lost): the photos may tell why; a queued cancel needs nothing
        photos = []
        if end == JobState.FAILED:
            try:
                photos = photo_diagnostics(paths.inbox / job.folder, paths.work_dir(job.id),
                                           limits=settings.pipeline.limits)
            except Exception as e:  # the diagnosis is a courtesy: it must never take the daemon down
                log.warning("[job %s] photo diagnostics failed: %s", job.id, e)
        write_failure_report(out, job.id, job.folder, end.value, scrub(message, settings.secrets()),
                             job.stage, None, timings, settings.pipeline.to_dict(), "n/a",
                             photos=photos, published={"job.log"} if log_file.exists() else set())
        if log_file.exists():
            (out / "job.log").write_bytes(log_file.read_bytes())

    return build
