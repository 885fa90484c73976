"""The Ray executor against a real local Ray cluster (`ray start --head` with logical GPUs, on the CPU)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLE, TINY_SETTINGS, drop, set_args, tiny_job, wait_for

ray = pytest.importorskip("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A one-node cluster advertising 2 GPUs (logical: tasks get CUDA_VISIBLE_DEVICES 0 or 1, and fall back to
    the CPU here) and 4 CPUs."""
    ray_bin = Path(sys.executable).parent / "ray"
    port = _free_port()
    temp = Path("/tmp") / f"ray-hm-{os.getpid()}"  # short: Ray's unix socket paths must stay < 108 chars
    # a HOME of its own: Ray keeps an auth token in ~/.ray/auth_token, and a stale one from another cluster makes
    # every connection fail with InvalidAuthToken
    home = Path(str(temp) + "-home")
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", HOME=str(home))
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    saved = {k: os.environ.get(k) for k in ("RAY_USAGE_STATS_ENABLED", "HOME")}
    os.environ.update({k: env[k] for k in saved})  # the daemons started by the tests inherit them
    subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=4", "--num-gpus=2",
                    "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                   check=True, env=env, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_unreachable_ray_cluster_is_a_clear_startup_error(daemon_factory) -> None:
    d = daemon_factory("--executor", "ray", "--ray-address", f"127.0.0.1:{_free_port()}").start()
    assert d.proc.wait(timeout=120) == 3
    assert "cannot connect to the Ray cluster" in d.log()


def _done_events(d, job_id: str) -> int:
    return sum(1 for e in d.events(job_id) if e["kind"] == "done")


def test_ray_runs_jobs_concurrently_once_each_and_survives_a_killed_worker(daemon_factory, ray_cluster) -> None:
    d = daemon_factory("--executor", "ray", "--ray-address", ray_cluster,
                       # a long geometry stage to catch two tasks in it; cheap stages after it
                       *set_args("jobs.device=cpu", "geometry.voxel_resolution=200", "texture.cpu_size=128",
                                 "report.render_size=64", "report.gt_samples=5000")).start()
    for name in ("a", "b", "c"):  # two at once, one waiting
        drop(SAMPLE, d.inbox, name=name)

    def two_in_geometry():
        running = [j for j in d.jobs().values()
                   if j["state"] == "running" and j["stage"] == "geometry" and j["worker"].startswith("ray:")
                   and "pending" not in j["worker"]]
        return running if len(running) == 2 else None

    running = wait_for(two_in_geometry, 240, "two ray tasks in geometry at the same time")
    assert running[0]["worker"] != running[1]["worker"]
    victim, survivor = running
    # kill -9 the Ray worker process running the victim's task (as the OOM killer or a dying node would)
    os.kill(int(victim["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    for job_id in "abc":
        assert d.wait_state(job_id, timeout=600)["state"] == "done", d.log()[-3000:]
    jobs = d.jobs()
    assert jobs[victim["id"]]["attempts"] == 2
    assert all(jobs[j]["attempts"] == 1 for j in "abc" if j != victim["id"])
    lost = " ".join(e["message"] for e in d.events(victim["id"]) if e["kind"] == "requeued")
    assert "ray task lost" in lost
    # resumed from its checkpoints: the stages before geometry were not run again
    assert jobs[victim["id"]]["timings"]["ingest"]["skipped"] is True
    for job_id in "abc":  # finished exactly once, published once, progress and timings streamed back
        assert _done_events(d, job_id) == 1
        assert (d.outbox / job_id / "mesh.glb").is_file()
        assert jobs[job_id]["progress"] == 100.0
        assert {"ingest", "cameras", "geometry", "report", "publish"} <= set(jobs[job_id]["timings"])
    assert sorted(p.name for p in d.outbox.iterdir() if not p.name.startswith(("_", "."))) == list("abc")
    assert d.alive()


def test_ray_without_shared_paths_moves_files_and_relays_cancel(daemon_factory, ray_cluster, tmp_path: Path) -> None:
    """Object-store mode: the task never sees the inbox, so only the daemon's relay can cancel it."""
    d = daemon_factory("--executor", "ray", "--ray-address", ray_cluster,
                       *set_args("jobs.device=cpu", "executor.shared_paths=false", "executor.max_transfer_mb=64",
                                 "geometry.voxel_resolution=320", *TINY_SETTINGS[:1])).start()
    tiny_job(tmp_path / "src" / "small")
    drop(tmp_path / "src" / "small", d.inbox)
    done = d.wait_state("small", timeout=300)
    assert done["state"] == "done", done["error"]
    assert (d.outbox / "small" / "mesh.glb").is_file() and (d.outbox / "small" / "report.html").is_file()
    assert done["outputs"]["report"] == str(d.outbox / "small" / "report.html")
    assert not (d.state / "jobs" / "small" / "stages").exists()  # checkpoints stayed on the node

    drop(SAMPLE, d.inbox, name="big")
    wait_for(lambda: (j := d.jobs().get("big")) and j["state"] == "running" and j["stage"] == "geometry",
             240, "the big job in geometry")
    (d.inbox / "big" / "CANCEL").touch()
    job = d.wait_state("big", timeout=240)
    assert job["state"] == "cancelled", job
    assert "CANCEL" in job["error"]
    assert (d.outbox / "big" / "report.html").is_file()
    assert not (d.outbox / "big" / "mesh.glb").exists()
    assert d.alive()
