"""Bounded soak test: a few hundred tiny real jobs through the real daemon; watches for leaks.

    python bench/soak.py [--jobs 200] [--batch 20] [--out bench/results]

Drops the jobs in batches, samples the daemon's and the worker's RSS and open file descriptors from /proc
every second, and writes bench/results/soak-<cpu|gpu>.json: jobs/hour, memory growth, fd growth. Stops by
itself (every job ends, or a time limit).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
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


def proc_stats(pid: int) -> tuple[float, int]:
    """(RSS MiB, open fds) of a process, from /proc."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[int]:
    """Worker processes of the daemon (multiprocessing's resource tracker left out)."""
    try:
        kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    out = []
    for k in kids:
        try:
            if b"resource_tracker" not in Path(f"/proc/{k}/cmdline").read_bytes():
                out.append(k)
        except OSError:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--limit", type=float, default=1800, help="seconds before giving up")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hotmesh-soak-"))
    inbox, outbox, state = root / "inbox", root / "outbox", root / "state"
    for d in (inbox, outbox, state):
        d.mkdir()
    proto = tiny_job(root / "proto", views=8, size=48)
    cmd = [sys.executable, "-m", "daemon.cli", "run", "--inbox", str(inbox), "--outbox", str(outbox), "--state", str(state),
           "--gpus", "cpu", "--settle-seconds", "0.3", "--set", "ops.state_retention_days=0",
           "--set", "ops.retention_interval_seconds=20"]
    for s in TINY_SETTINGS:
        cmd += ["--set", s]
    daemon = subprocess.Popen(cmd, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    t0 = time.monotonic()
    dropped = 0
    try:
        time.sleep(2)
        while time.monotonic() - t0 < args.limit:
            ledger = Ledger(state / "ledger.db") if (state / "ledger.db").exists() else None
            done = sum(1 for j in ledger.jobs() if j.state.terminal) if ledger else 0
            if ledger:
                ledger.close()
            if dropped < args.jobs and dropped - done < args.batch:
                for _ in range(min(args.batch, args.jobs - dropped)):
                    staging = root / "staging" / f"job{dropped:04d}"
                    shutil.copytree(proto, staging)
                    staging.rename(inbox / staging.name)
                    dropped += 1
            rss, fds = proc_stats(daemon.pid)
            kids = children(daemon.pid)
            wrss, wfds = proc_stats(kids[0]) if kids else (None, None)
            samples.append({"t": round(time.monotonic() - t0, 1), "done": done, "daemon_rss_mb": round(rss, 1),
                            "daemon_fds": fds, "worker_rss_mb": wrss and round(wrss, 1), "worker_fds": wfds})
            if done >= args.jobs:
                break
            time.sleep(1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
    elapsed = samples[-1]["t"]
    ledger = Ledger(state / "ledger.db")
    states = ledger.counts()
    ledger.close()
    warm = [s for s in samples if s["done"] >= min(20, args.jobs)]  # after imports and caches settled
    result = {"benchmark": "soak", "card": card(), "date": time.strftime("%Y-%m-%d"), "jobs": args.jobs,
              "states": states, "seconds": elapsed, "jobs_per_hour": round(3600 * samples[-1]["done"] / elapsed, 1),
              "daemon_rss_mb": {"first": samples[0]["daemon_rss_mb"], "after_warmup": warm[0]["daemon_rss_mb"] if warm else None,
                                "last": samples[-1]["daemon_rss_mb"], "max": max(s["daemon_rss_mb"] for s in samples)},
              "daemon_fds": {"first": samples[0]["daemon_fds"], "after_warmup": warm[0]["daemon_fds"] if warm else None,
                             "last": samples[-1]["daemon_fds"], "max": max(s["daemon_fds"] for s in samples)},
              "worker_rss_mb": {"after_warmup": warm[0]["worker_rss_mb"] if warm else None,
                                "last": samples[-1]["worker_rss_mb"],
                                "max": max((s["worker_rss_mb"] or 0) for s in samples)},
              "worker_fds": {"after_warmup": warm[0]["worker_fds"] if warm else None, "last": samples[-1]["worker_fds"]},
              "samples": samples}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "soak-cpu.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
