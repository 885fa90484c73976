"""Several GPUs on one host: the real daemon with one worker per GPU against the same daemon on one GPU.

    python bench/multigpu.py --data ../shared/data/spot_render [--jobs 4] [--single 0] [--multi all]
                             [--kill] [--set key=value ...] [--out bench/results]

Three runs of the real daemon (`daemon.cli run`), each on fresh inbox/outbox/state folders:
1. ``--gpus <single>`` with --jobs copies of the data set dropped at once: the 1-GPU baseline;
2. ``--gpus <multi>`` with the same jobs: every GPU gets a worker;
3. (--kill) ``--gpus <multi>`` with one job per slot + 1; once every slot is busy, SIGKILL one worker process
   (the OOM killer's signal). Only its job may be re-queued (attempt 2) and all jobs must still end done.
While each run goes, ``nvidia-smi`` samples every GPU's utilisation and memory every 0.5 s. The per-job GPU comes
from the ledger's "claimed" events (``host:gpuN:pid``). Writes multigpu-<card>.json (+ the samples as CSV).
On a machine without GPUs the same runs work with fake slots (``--single 0 --multi 0,1 --set jobs.device=cpu``),
which is how the script itself is checked.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run_bench import card  # noqa: E402
from daemon.ledger import Ledger  # noqa: E402


class GpuSampler:
    """``nvidia-smi`` polled every ``period`` seconds in a thread: (t, gpu index, util %, memory MiB) rows."""

    def __init__(self, period: float = 0.5) -> None:
        self.period = period
        self.rows: list[tuple[float, int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                     timeout=5).stdout
                for line in out.strip().splitlines():
                    i, u, m = (int(float(x)) for x in line.split(","))
                    self.rows.append((t, i, u, m))
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.period)

    def __enter__(self) -> "GpuSampler":
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=10)

    def summary(self, t0: float, t1: float) -> dict[str, Any]:
        """Per GPU: busy fraction (util > 0) and peak memory over [t0, t1]; fraction of samples with all GPUs busy."""
        rows = [r for r in self.rows if t0 <= r[0] <= t1]
        gpus = sorted({r[1] for r in rows})
        per: dict[str, Any] = {}
        for g in gpus:
            mine = [r for r in rows if r[1] == g]
            per[str(g)] = {"samples": len(mine), "busy_fraction": round(sum(r[2] > 0 for r in mine) / len(mine), 3),
                           "mean_util": round(sum(r[2] for r in mine) / len(mine), 1),
                           "peak_memory_mib": max(r[3] for r in mine)}
        by_time: dict[float, dict[int, int]] = {}
        for t, g, u, _ in rows:
            by_time.setdefault(t, {})[g] = u
        ticks = [v for v in by_time.values() if len(v) == len(gpus)]
        return {"gpus": per, "samples_all_busy_fraction":
                round(sum(all(u > 0 for u in v.values()) for v in ticks) / len(ticks), 3) if ticks else None,
                "samples_any_busy_fraction":
                round(sum(any(u > 0 for u in v.values()) for v in ticks) / len(ticks), 3) if ticks else None}


def _slot(worker: str | None) -> str | None:
    m = re.search(r":(gpu\w+|cpu):", worker or "")
    return m.group(1) if m else None


def _claims(ledger: Ledger, job_id: str) -> list[str]:
    return [e["data"].get("worker", "") for e in ledger.events(job_id) if e["kind"] == "claimed"]


def run_daemon(data: Path, jobs: int, gpus: str, overrides: list[str], sampler: GpuSampler,
               kill: bool = False, timeout: float = 540) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="hotmesh-mg-"))
    inbox, outbox, state = root / "inbox", root / "outbox", root / "state"
    for d in (inbox, outbox, state):
        d.mkdir()
    cmd = [sys.executable, "-m", "daemon.cli", "run", "--inbox", str(inbox), "--outbox", str(outbox),
           "--state", str(state), "--gpus", gpus, "--settle-seconds", "0.3",
           "--set", "jobs.cancel_poll_seconds=0.2", "--set", "intake.rescan_seconds=1"]
    for s in overrides:
        cmd += ["--set", s]
    daemon = subprocess.Popen(cmd, cwd=str(REPO), stdout=open(root / "daemon.log", "w"), stderr=subprocess.STDOUT)
    killed: dict[str, Any] | None = None
    try:
        time.sleep(3)
        for i in range(jobs):
            shutil.copytree(data, root / "staging" / f"job{i:02d}")
        t_drop = time.time()
        for i in range(jobs):
            (root / "staging" / f"job{i:02d}").rename(inbox / f"job{i:02d}")
        deadline = time.monotonic() + timeout
        all_jobs = []
        while time.monotonic() < deadline:
            time.sleep(0.25)
            if not (state / "ledger.db").exists():
                continue
            ledger = Ledger(state / "ledger.db")
            all_jobs = ledger.jobs()
            ledger.close()
            if kill and killed is None:
                # wait until every slot is busy and one job is past geometry, so the kill lands mid-refinement
                running = [j for j in all_jobs if j.state.value == "running" and j.worker]
                slots = {_slot(j.worker) for j in running}
                victims = [j for j in running if j.stage in ("refine", "texture")]
                if len(slots) >= 2 and victims:
                    v = victims[0]
                    pid = int(v.worker.split(":")[2])
                    os.kill(pid, signal.SIGKILL)
                    killed = {"job": v.id, "worker": v.worker, "slot": _slot(v.worker), "stage": v.stage,
                              "at_seconds": round(time.time() - t_drop, 1),
                              "others_running": {j.id: j.stage for j in running if j.id != v.id}}
                    print(f"killed {killed}", flush=True)
            if len(all_jobs) >= jobs and all(j.state.terminal for j in all_jobs):
                break
        t_end = time.time()
        ledger = Ledger(state / "ledger.db")
        all_jobs = ledger.jobs()
        rows = []
        for j in all_jobs:
            claims = _claims(ledger, j.id)
            rows.append({"job": j.id, "state": j.state.value, "attempts": j.attempts,
                         "slots": [_slot(c) for c in claims], "workers": claims,
                         "started": round(j.started - t_drop, 1) if j.started else None,
                         "finished": round(j.finished - t_drop, 1) if j.finished else None,
                         "stage_seconds": {k: round(v.get("seconds", 0.0), 2) for k, v in j.timings.items()
                                           if isinstance(v, dict)},
                         "error": j.error})
        events = {j.id: [f"{e['kind']}: {e['message']}" for e in ledger.events(j.id)] for j in all_jobs}
        ledger.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=120)
        except subprocess.TimeoutExpired:
            daemon.kill()
    ends = [r["finished"] for r in rows if r["finished"] is not None]
    result: dict[str, Any] = {
        "gpus_arg": gpus, "jobs": jobs, "t_drop": round(t_drop, 2), "wall_seconds": round(max(ends), 1) if ends else None,
        "all_done": len(rows) == jobs and all(r["state"] == "done" for r in rows),
        "jobs_per_slot": {s: sum(1 for r in rows if r["slots"] and r["slots"][-1] == s)
                          for s in sorted({r["slots"][-1] for r in rows if r["slots"]})},
        "rows": rows, "nvidia_smi": sampler.summary(t_drop, t_end), "daemon_alive_until_stop": True,
    }
    if kill:
        result["killed"] = killed
        if killed:
            result["victim_events"] = events.get(killed["job"], [])
            result["only_victim_requeued"] = all(
                (r["attempts"] == 2) == (r["job"] == killed["job"]) for r in rows)
    if result["all_done"]:
        shutil.rmtree(root, ignore_errors=True)
    else:
        result["kept"] = str(root)
        print((root / "daemon.log").read_text()[-4000:], flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--single", default="0", help="--gpus for the baseline run")
    ap.add_argument("--multi", default="all", help="--gpus for the multi-GPU runs")
    ap.add_argument("--kill", action="store_true", help="also run the kill-one-worker check")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    name = card()
    tag = "h100x2" if "H100" in name else re.sub(r"\W+", "-", name.lower())[:20]
    result: dict[str, Any] = {"benchmark": "multigpu", "card": name, "date": time.strftime("%Y-%m-%d"),
                              "data": args.data.name, "overrides": args.overrides}
    try:
        result["gpus"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        result["gpus"] = []
    out_json = args.out / f"multigpu-{tag}.json"
    with GpuSampler() as sampler:
        for label, gpus, kill, n in (("single", args.single, False, args.jobs), ("multi", args.multi, False, args.jobs),
                                     ("kill", args.multi, True, 3)):
            if kill and not args.kill:
                continue
            print(f"== {label}: --gpus {gpus}, {n} jobs", flush=True)
            result[label] = run_daemon(args.data, n, gpus, args.overrides, sampler, kill=kill)
            r = result[label]
            print(json.dumps({k: r[k] for k in ("wall_seconds", "all_done", "jobs_per_slot", "nvidia_smi")}), flush=True)
            if "single" in result and "multi" in result and label == "multi":
                s, m = result["single"]["wall_seconds"], result["multi"]["wall_seconds"]
                result["speedup"] = round(s / m, 2) if s and m else None
                print(f"speedup {result['speedup']}", flush=True)
            out_json.write_text(json.dumps(result, indent=1))  # after every run: a timeout keeps what was measured
    with open(args.out / f"multigpu-{tag}-nvidia-smi.csv", "w") as f:
        f.write("time,gpu,util_percent,memory_mib\n")
        for t, g, u, mem in sampler.rows:
            f.write(f"{t:.2f},{g},{u},{mem}\n")
    print(f"wrote {out_json}", flush=True)


if __name__ == "__main__":
    main()
