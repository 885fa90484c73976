"""Child processes that a stage starts for work that must not share its process (pycolmap's writer) or its GIL
(xatlas), and that must not outlive what they were started for."""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from typing import Callable


def start_child(warm: Callable[[], object]) -> ProcessPoolExecutor:
    """One spawned worker process, started now with ``warm`` (a module-level function: its imports) queued, so that
    its spawn and imports run while the caller does other work. Where it cannot be started, nothing is left behind
    and the error is raised."""
    pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
    try:
        pool.submit(warm)
    except BaseException:  # no memory, no processes left: nothing to keep
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    return pool


def stop_children(pool: ProcessPoolExecutor) -> None:
    """Terminate ``pool``'s worker processes and shut it down without waiting.

    For a task that hung or that nobody will take: ``shutdown`` alone waits for a running task (a ``with`` block's
    exit too, and the interpreter's at exit), and ProcessPoolExecutor has no public way to stop one."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
