"""One worker process per device slot (`--gpus 0,1`), run here with fake GPU ids on the CPU."""
from __future__ import annotations

import os
import signal

from tests.conftest import SAMPLE, drop, set_args, wait_for


def test_two_slots_run_concurrently_and_a_killed_worker_only_costs_its_job(daemon_factory) -> None:
    # a long geometry stage so that both slots are caught in it; the stages after it are made cheap (what is checked
    # is the hand-out to slots and the cost of a killed worker, not the texture or the report)
    d = daemon_factory("--gpus", "0,1", *set_args("jobs.device=cpu", "geometry.voxel_resolution=224",
                                                  "texture.enabled=false", "report.render_size=64",
                                                  "report.gt_samples=5000")).start()
    # each slot's worker gets its own CUDA_VISIBLE_DEVICES; on this CPU machine they fall back to the CPU
    for name in ("a", "b"):  # one in each slot
        drop(SAMPLE, d.inbox, name=name)

    def two_running():
        running = [j for j in d.jobs().values() if j["state"] == "running" and j["stage"] == "geometry"]
        return running if len(running) == 2 else None

    running = wait_for(two_running, 180, "two jobs in geometry at the same time")
    slots = {r["worker"].split(":")[1] for r in running}
    assert slots == {"gpu0", "gpu1"}
    victim, survivor = running
    os.kill(int(victim["worker"].split(":")[2]), signal.SIGKILL)  # e.g. the OOM killer
    for job_id in "ab":
        assert d.wait_state(job_id, timeout=400)["state"] == "done"
    jobs = d.jobs()
    assert jobs[victim["id"]]["attempts"] == 2
    assert jobs[survivor["id"]]["attempts"] == 1
    assert "killed by SIGKILL" in " ".join(e["message"] for e in d.events(victim["id"]))
    assert d.alive()
