"""Scheduler throughput: jobs/hour vs number of workers, local executor vs Ray, on the CPU with a small real job.

    python bench/throughput.py [--jobs 24] [--workers 1,2,4] [--ray] [--out bench/results]

For each worker count W the real daemon starts with W fake GPU slots (`--gpus 0,..,W-1`, jobs on the CPU, one
thread each so W jobs can use W cores) and gets --jobs copies of a tiny posed job dropped at once; the clock runs
from the drop to the last job's end in the ledger. With --ray the same runs go through a local Ray cluster
(`ray start --head --num-gpus W`), and the single-worker runs give the Ray path's overhead per job.
Writes bench/results/throughput-cpu.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run_bench import card  # noqa: E402
from daemon.ledger import Ledger  # noqa: E402
from tests.conftest import TINY_SETTINGS, tiny_job  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(proto: Path, jobs: int, workers: int, executor: str, ray_address: str | None) -> dict:
    root = Path(tempfile.mkdtemp(prefix="hotmesh-tp-"))
    inbox, outbox, state = root / "inbox", root / "outbox", root / "state"
    for d in (inbox, outbox, state):
        d.mkdir()
    cmd = [sys.executable, "-m", "daemon.cli", "run", "--inbox", str(inbox), "--outbox", str(outbox),
           "--state", str(state), "--gpus", ",".join(str(i) for i in range(workers)), "--settle-seconds", "0.3",
           "--set", "jobs.device=cpu", "--set", "jobs.cancel_poll_seconds=0.2", "--set", "intake.rescan_seconds=1"]
    if executor == "ray":
        cmd += ["--executor", "ray", "--ray-address", ray_address or "auto", "--set", f"executor.max_in_flight={workers}"]
    for s in TINY_SETTINGS:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    daemon = subprocess.Popen(cmd, cwd=str(REPO), stdout=open(root / "daemon.log", "w"), stderr=subprocess.STDOUT,
                              env=env)
    try:
        time.sleep(3)
        for i in range(jobs):
            staging = root / "staging" / f"job{i:03d}"
            shutil.copytree(proto, staging)
        t_drop = time.time()
        for i in range(jobs):
            (root / "staging" / f"job{i:03d}").rename(inbox / f"job{i:03d}")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (state / "ledger.db").exists():
                ledger = Ledger(state / "ledger.db")
                done = [j for j in ledger.jobs() if j.state.terminal]
                ledger.close()
                if len(done) >= jobs:
                    break
            time.sleep(0.5)
        ledger = Ledger(state / "ledger.db")
        all_jobs = ledger.jobs()
        ledger.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
    ends = [j.finished for j in all_jobs if j.finished]
    runs = [j.finished - j.started for j in all_jobs if j.finished and j.started]
    wall = max(ends) - t_drop
    states = {s: sum(1 for j in all_jobs if j.state.value == s) for s in {j.state.value for j in all_jobs}}
    if all(j.state.value == "done" for j in all_jobs):
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"not all done; kept {root}", flush=True)
    return {"executor": executor, "workers": workers, "jobs": jobs, "states": states, "wall_seconds": round(wall, 2),
            "jobs_per_hour": round(3600 * jobs / wall, 1),
            "mean_job_seconds": round(sum(runs) / len(runs), 2) if runs else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=24)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--ray", action="store_true", help="also measure the Ray executor")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    proto_root = Path(tempfile.mkdtemp(prefix="hotmesh-tp-proto-"))
    proto = tiny_job(proto_root / "proto", views=8, size=48)
    rows = []
    for w in counts:
        rows.append(run_once(proto, args.jobs, w, "local", None))
        print(json.dumps(rows[-1]), flush=True)
    if args.ray:
        ray_bin = Path(sys.executable).parent / "ray"
        for w in counts:
            # a fresh HOME per cluster: Ray keeps an auth token in ~/.ray/auth_token, and one left by the previous
            # cluster makes every connection fail with InvalidAuthToken
            home = Path(f"/tmp/ray-tp-{os.getpid()}-{w}-home")
            home.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", HOME=str(home))
            os.environ["HOME"] = str(home)
            port = _free_port()
            subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", f"--num-cpus={max(w, 1) + 1}",
                            f"--num-gpus={w}", "--include-dashboard=false", "--disable-usage-stats",
                            f"--temp-dir=/tmp/ray-tp-{os.getpid()}"], check=True, env=env, capture_output=True)
            try:
                rows.append(run_once(proto, args.jobs, w, "ray", f"127.0.0.1:{port}"))
                print(json.dumps(rows[-1]), flush=True)
            finally:
                subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True)
    base = {r["workers"]: r for r in rows if r["executor"] == "local"}
    for r in rows:
        r["speedup_vs_1"] = round(base[1]["wall_seconds"] / r["wall_seconds"], 2) if 1 in base else None
        if r["executor"] == "ray" and r["workers"] in base:
            r["overhead_per_job_seconds"] = round((r["wall_seconds"] - base[r["workers"]]["wall_seconds"])
                                                  * r["workers"] / r["jobs"], 2)
    result = {"benchmark": "throughput", "card": card(), "cpu_cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
              "job": "8 views 48x48, TINY settings, 1 thread per job", "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput-cpu.json").write_text(json.dumps(result, indent=1))
    shutil.rmtree(proto_root, ignore_errors=True)


if __name__ == "__main__":
    main()
