"""Child processes that a stage starts for work that must not share its process (pycolmap's writer) or its GIL
(xatlas), and that must not outlive what they were started for."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor


def stop_children(pool: ProcessPoolExecutor) -> None:
    """Terminate ``pool``'s worker processes and shut it down without waiting.

    For a task that hung or that nobody will take: ``shutdown`` alone waits for a running task (a ``with`` block's
    exit too, and the interpreter's at exit), and ProcessPoolExecutor has no public way to stop one."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
