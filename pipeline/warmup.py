"""What a job's stages load once per process: loaded when a worker starts (:func:`preload`), and the optimiser's
first step on a thread while a job's first stages run (:func:`start_warm_up`).

A worker process is long-lived, but its first job paid, inside the refinement, for importing ``torch._dynamo``: torch's
first optimiser step of a process does (4 s on the H200, 1-3 s on 2 CPU cores). Structure from motion (its own
process) and the depth maps take longer, so the job no longer waits for it.

Only that: importing pymeshlab on a thread other than the main one corrupted the heap (an abort at exit in five jobs
of five), so the other heavy modules load where they are first used, on the job's own thread.
"""
from __future__ import annotations

import atexit
import functools
import logging
import threading
import time

log = logging.getLogger("hotmesh.warmup")


def warm_up() -> float:
    """Take one optimiser step on a throw-away CPU tensor (which imports ``torch._dynamo``). Never raises: the
    refinement's own first step would then pay, as before. -> seconds."""
    t = time.monotonic()
    try:
        import torch

        p = torch.zeros(1, requires_grad=True)
        p.grad = torch.zeros(1)
        torch.optim.Adam([p], lr=0.0).step()
    except Exception as e:  # noqa: BLE001 - a warm-up that fails changes nothing
        log.debug("warm-up: torch's optimiser: %s", e)
    return time.monotonic() - t


@functools.lru_cache(maxsize=None)
def start_warm_up() -> threading.Thread:
    """:func:`warm_up` on a daemon thread, once per process. The process waits for it at exit (up to a minute):
    a job that fails in its first second would otherwise exit while the thread is inside torch's import, and the
    interpreter's teardown of a daemon thread in C++ code aborts the process ("terminate called without an active
    exception"), so a clean failure exits with SIGABRT."""
    thread = threading.Thread(target=warm_up, name="hotmesh-warm-up", daemon=True)
    thread.start()
    atexit.register(thread.join, 60.0)
    return thread


def preload(device: str) -> float:
    """What a worker process does once when it starts, so that its first job starts like every later one: import
    every stage's modules (torch, trimesh, the stages themselves: 1.9-2.3 s on 2 CPU cores), start
    :func:`start_warm_up`, and on ``device`` "cuda" create torch's CUDA context and the jobs' mesh renderer. On the
    calling thread, which must be the process's main thread (see the module's note on pymeshlab). Never raises: a
    job then loads what it needs itself, and says what is wrong. -> seconds."""
    t = time.monotonic()
    try:
        import pipeline.runner  # noqa: F401 - imports every stage, and torch with them

        start_warm_up()
        if device == "cuda":
            import torch

            from pipeline.imaging.raster import mesh_renderer

            torch.zeros(1, device="cuda")  # the context: hundreds of ms that the first stage on the GPU paid
            # the renderer the jobs take (one per process and GPU): loading nvdiffrast's plugin is part of a process's
            # first render, and a fresh machine builds it there (26.5 s on the H200). Where it does not load,
            # mesh_renderer says so once and the jobs ray cast on the CPU, as they would have
            mesh_renderer("cuda")
    except Exception as e:  # noqa: BLE001 - the job's own imports report a broken install better
        log.warning("preloading the pipeline failed (%s: %s); the job loads it itself", type(e).__name__, e)
    return time.monotonic() - t
