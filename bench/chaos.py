"""Bounded, repeatable fault run against real daemons; checks the invariants after every round.

    python bench/chaos.py [--rounds 4] [--seed 1] [--burst 50] [--per-round 8] [--out bench/results]

Round 1 drops a burst of ``--burst`` folders (fast copies: one rename; slow copies: file by file with pauses
longer than intake.settle_seconds, poses first or last; a few adversarial inputs); every later round drops
``--per-round`` folders and re-drops one finished folder with new content. Meanwhile faults are injected at
random (seeded) moments: kill -9 of the worker or of the daemon while a job is in a chosen stage (the daemon is
then restarted), CANCEL races (while copying, queued, or running), the state volume (a tmpfs) filled for a few
seconds, the outbox made immutable (`chattr +i`) for a few seconds, a symbolic link to a folder outside the inbox
dropped as if it were a job folder, a second daemon started on the same inbox with its own state folder. Every
round also drops a folder holding FIFOs (a named pipe `images/extra.jpg` and `notes.txt`) and a slow copy of a
folder without poses. After each round, with every job ended and
the daemon stopped (SIGTERM, or kill -9 on some rounds, so the next start recovers), the invariants:

- every folder dropped is exactly one job, and every job is in exactly one terminal state; a linked folder is no
  job (and a `link-refused` event names it); a second daemon on the inbox exits at once and makes no job;
- a folder with FIFOs ends done, its report listing them as not used; a slow copy ends done on all its files (the
  job's fingerprint is the folder's final one), never refused as a re-drop;
- no hidden folder or temporary file is left in the outbox;
- the ledger passes SQLite's integrity check;
- no file outside the inbox was opened (inotify on a bait folder that linked / absolute-path inputs point at);
- good inputs end done, or failed/cancelled only for an injected reason (a CANCEL, a full disk, too many kills);
  bad inputs fail with their message; a re-dropped finished folder is refused visibly (ledger event), and a
  folder that was not re-dropped is not.

"lost" counts every breach. Writes bench/results/chaos-cpu.json. Needs root for the tmpfs and chattr faults;
without it those faults are skipped and the JSON says so. Only local files and processes are touched.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run_bench import card  # noqa: E402
from daemon.intake import fingerprint, snapshot  # noqa: E402
from daemon.ledger import Ledger, LedgerError  # noqa: E402
from tests.conftest import TINY_SETTINGS, tiny_job  # noqa: E402
from tests.faults import FaultUnavailable, OpenWatch, fill, hidden_entries, set_immutable, tmpfs  # noqa: E402

STAGES = ("ingest", "cameras", "masks", "geometry", "refine", "texture", "report", "publish")
SETTINGS = [*TINY_SETTINGS, "texture.cpu_size=256", "texture.cpu_max_faces=20000", "intake.rescan_seconds=1",
            "intake.missing_files_seconds=8", "jobs.cancel_poll_seconds=0.2", "jobs.max_attempts=5",
            "ops.min_free_mb=0", "ops.state_retention_days=0", "ops.retention_interval_seconds=15"]
GOOD = ("fast", "slow-posed", "slow-unposed")
# adversarial inputs: kind -> (expected end, text the error must contain)
BAD = {"link-dir": ("failed", "symbolic links point outside"), "link-file": ("failed", "symbolic links point outside"),
       "abs-path": ("any", None), "corrupt": ("failed", "damaged PNG"), "empty": ("failed", "contains no images"),
       "fifo": ("done", None)}  # FIFOs are never opened: listed as not used, the job runs on its photos


@dataclass
class Folder:
    name: str
    kind: str
    round: int
    faulted: list[str] = field(default_factory=list)  # injected faults that may explain a non-done end
    redropped: bool = False


@dataclass
class Fault:
    round: int
    kind: str
    t: float
    detail: str


class Run:
    def __init__(self, root: Path, seed: int, use_tmpfs: bool) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.inbox, self.outbox, self.state = root / "inbox", root / "outbox", root / "state"
        self.bait = root / "bait"  # outside the inbox: nothing may ever open a file here
        self.staging = root / "staging"
        for d in (self.inbox, self.outbox, self.state, self.staging):
            d.mkdir(parents=True, exist_ok=True)
        self.use_tmpfs = use_tmpfs
        self.proto = tiny_job(root / "proto", views=8, size=48)
        shutil.copytree(self.proto, self.bait)
        self.folders: dict[str, Folder] = {}
        self.faults: list[Fault] = []
        self.daemon: subprocess.Popen | None = None
        self.starts = 0
        self.t0 = time.monotonic()
        self.copying: set[str] = set()
        self.threads: list[threading.Thread] = []
        self.round = 0
        self.unexpected_exits = 0
        self.links: list[str] = []  # inbox links to the bait folder (never jobs)
        self.seconds: list[dict[str, Any]] = []  # second daemons started on the inbox: state folder, exit code

    # -- the daemon -----------------------------------------------------------------------------------

    def start(self) -> None:
        cmd = [sys.executable, "-m", "daemon.cli", "run", "--inbox", str(self.inbox), "--outbox", str(self.outbox),
               "--state", str(self.state), "--gpus", "cpu", "--settle-seconds", "0.5"]
        for s in SETTINGS:
            cmd += ["--set", s]
        log = open(self.root / f"daemon-{self.starts}.log", "w")
        self.daemon = subprocess.Popen(cmd, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT,
                                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.starts += 1

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.poll() is None

    def stop(self, kill: bool = False) -> int | None:
        if not self.alive():
            return self.daemon.returncode if self.daemon else None
        self.daemon.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            return self.daemon.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            return self.daemon.wait()

    def jobs(self) -> dict[str, dict[str, Any]]:
        try:
            ledger = Ledger(self.state / "ledger.db")
        except LedgerError:
            return {}
        try:
            return {j.folder: j.to_dict() for j in ledger.jobs()}
        except LedgerError:
            return {}
        finally:
            ledger.close()

    def events(self, job_id: str) -> list[str]:
        ledger = Ledger(self.state / "ledger.db")
        try:
            return [e["kind"] for e in ledger.events(job_id)]
        finally:
            ledger.close()

    def watchdog(self) -> None:
        """A daemon that died by itself is a breach (restarted so the run can go on)."""
        if self.daemon is not None and not self.alive():
            self.unexpected_exits += 1
            print(f"  !! daemon exited by itself (code {self.daemon.returncode}); restarting", flush=True)
            self.start()

    # -- inputs ---------------------------------------------------------------------------------------

    def _name(self, kind: str) -> str:
        return f"r{self.round}-{kind}-{len(self.folders):03d}"

    def _variant(self, dst: Path, views_drop: int = 0) -> Path:
        shutil.copytree(self.proto, dst, symlinks=True)
        if views_drop:  # new content: fewer views (and a transforms.json that lists only those)
            meta = json.loads((dst / "transforms.json").read_text())
            for fr in meta["frames"][-views_drop:]:
                (dst / fr["file_path"]).unlink()
            meta["frames"] = meta["frames"][:-views_drop]
            (dst / "transforms.json").write_text(json.dumps(meta))
        return dst

    def make_bad(self, kind: str, dst: Path) -> None:
        self._variant(dst)
        images = sorted((dst / "images").iterdir())
        if kind == "link-dir":
            shutil.rmtree(dst / "images")
            (dst / "images").symlink_to(self.bait / "images")
        elif kind == "link-file":
            images[0].unlink()
            images[0].symlink_to(self.bait / "images" / images[0].name)
        elif kind == "abs-path":
            meta = json.loads((dst / "transforms.json").read_text())
            name = Path(meta["frames"][0]["file_path"]).name
            (dst / meta["frames"][0]["file_path"]).unlink()
            meta["frames"][0]["file_path"] = str(self.bait / "images" / name)
            (dst / "transforms.json").write_text(json.dumps(meta))
        elif kind == "corrupt":
            for f in images[:5]:
                f.write_bytes(f.read_bytes()[:200])
        elif kind == "empty":
            shutil.rmtree(dst / "images")
            (dst / "transforms.json").unlink()
            (dst / "notes.txt").write_text("oops")
        elif kind == "fifo":  # nothing ever writes to them: whoever opens one for reading blocks for good
            os.mkfifo(dst / "images" / "extra.jpg")
            os.mkfifo(dst / "notes.txt")

    def drop(self, kind: str) -> Folder:
        name = self._name(kind)
        folder = Folder(name, kind, self.round)
        self.folders[name] = folder
        if kind in ("fast", *BAD):
            staged = self.staging / name
            if kind in BAD:
                self.make_bad(kind, staged)
            else:
                self._variant(staged)
            staged.rename(self.inbox / name)
        else:
            t = threading.Thread(target=self._slow_copy, args=(name, kind == "slow-posed"), daemon=True)
            self.copying.add(name)
            t.start()
            self.threads.append(t)
        return folder

    def _slow_copy(self, name: str, poses_first: bool) -> None:
        """File by file, with pauses longer than intake.settle_seconds (0.5 s) but shorter than
        intake.missing_files_seconds (8 s): what a slow network copy looks like."""
        rng = random.Random(hash(name) & 0xFFFF)
        src = self.proto
        files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
        poses = [f for f in files if f.name == "transforms.json"]
        rest = [f for f in files if f.name != "transforms.json"]
        order = poses + rest if poses_first else rest + poses
        dst = self.inbox / name
        dst.mkdir()
        for rel in order:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
            time.sleep(rng.uniform(0.6, 1.4))
        self.copying.discard(name)

    def redrop(self) -> str | None:
        """A finished (done) folder of an earlier round dropped again under its name with new content."""
        jobs = self.jobs()
        done = [f for f in self.folders.values() if f.round < self.round and f.kind == "fast" and not f.redropped
                and jobs.get(f.name, {}).get("state") == "done"]
        if not done:
            return None
        f = self.rng.choice(sorted(done, key=lambda x: x.name))
        staged = self._variant(self.staging / f"{f.name}.new", views_drop=1)
        shutil.rmtree(self.inbox / f.name)
        staged.rename(self.inbox / f.name)
        f.redropped = True
        return f.name

    # -- faults ---------------------------------------------------------------------------------------

    def _running_at(self, stage: str | None, timeout: float) -> dict[str, Any] | None:
        """A running job, preferably in ``stage`` (polled every 50 ms); any running one after the timeout."""
        deadline = time.monotonic() + timeout
        fallback = None
        while time.monotonic() < deadline:
            running = [j for j in self.jobs().values() if j["state"] == "running" and j["worker"]]
            for j in running:
                if stage is None or j["stage"] == stage:
                    return j
            fallback = running[0] if running else fallback
            time.sleep(0.05)
        return fallback

    def _record(self, kind: str, detail: str, folders: list[str]) -> None:
        self.faults.append(Fault(self.round, kind, round(time.monotonic() - self.t0, 1), detail))
        for name in folders:
            if name in self.folders:
                self.folders[name].faulted.append(kind)
        print(f"  fault {kind}: {detail}", flush=True)

    def kill_worker(self) -> None:
        job = self._running_at(self.rng.choice(STAGES), 20)
        if job is None:
            return
        try:
            os.kill(int(job["worker"].split(":")[2]), signal.SIGKILL)
        except (ProcessLookupError, ValueError, IndexError):
            return
        self._record("kill-9-worker", f"{job['id']} in {job['stage']}", [job["folder"]])

    def kill_daemon(self) -> None:
        job = self._running_at(self.rng.choice(STAGES), 20)
        self.stop(kill=True)
        self._record("kill-9-daemon", f"with {job['id']} in {job['stage']}" if job else "idle",
                     [job["folder"]] if job else [])
        time.sleep(self.rng.uniform(0.2, 2.0))
        self.start()

    def cancel(self) -> None:
        jobs = self.jobs()
        when = self.rng.choice(["copying", "queued", "running"])
        if when == "copying" and self.copying:
            name = self.rng.choice(sorted(self.copying))
        elif when == "queued" and any(j["state"] == "queued" for j in jobs.values()):
            name = self.rng.choice(sorted(f for f, j in jobs.items() if j["state"] == "queued"))
        else:
            job = self._running_at(self.rng.choice(STAGES), 10)
            if job is None:
                return
            when, name = f"running ({job['stage']})", job["folder"]
        try:
            (self.inbox / name / "CANCEL").write_text("")
        except OSError:
            return
        self._record("cancel", f"{name} while {when}", [name])

    def disk_full(self) -> None:
        if not self.use_tmpfs:
            return
        seconds = self.rng.uniform(2, 5)
        running = [j["folder"] for j in self.jobs().values() if j["state"] in ("running", "queued")]
        filler = fill(self.state, f".chaos-filler-{len(self.faults)}")
        time.sleep(seconds)
        running += [j["folder"] for j in self.jobs().values() if j["state"] in ("running", "queued")]
        filler.unlink()
        self._record("state-disk-full", f"{seconds:.1f} s", sorted(set(running)))

    def outbox_unwritable(self) -> None:
        if not self.use_tmpfs:  # (root) needed for chattr too
            return
        seconds = self.rng.uniform(1, 4)
        try:
            set_immutable(self.outbox, True)
        except FaultUnavailable:
            return
        try:
            time.sleep(seconds)
        finally:
            set_immutable(self.outbox, False)
        self._record("outbox-immutable", f"{seconds:.1f} s", [])

    def link_job(self) -> None:
        """A symbolic link to a folder outside the inbox (the bait), dropped like a job folder."""
        name = f"r{self.round}-linkjob-{len(self.links):03d}"
        (self.inbox / name).symlink_to(self.bait, target_is_directory=True)
        self.links.append(name)
        self._record("linked-job-folder", f"{name} -> {self.bait.name}", [])

    def _inbox_locked(self, timeout: float) -> bool:
        """Whether the running daemon holds the inbox lock (polled until ``timeout``)."""
        import fcntl

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(self.inbox / ".hotmesh.lock", "a") as fh:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        return True
                    fcntl.flock(fh, fcntl.LOCK_UN)
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def second_daemon(self) -> None:
        """Another daemon on the same inbox with its own state folder: it must exit at once, making no job."""
        if not self._inbox_locked(60):
            return  # the first daemon is (re)starting: a second one now would rightly be the one that runs
        state = self.root / f"state-second-{len(self.seconds)}"
        cmd = [sys.executable, "-m", "daemon.cli", "run", "--inbox", str(self.inbox), "--outbox",
               str(self.root / "outbox-second"), "--state", str(state), "--gpus", "cpu", "--settle-seconds", "0.5"]
        with open(self.root / f"second-{len(self.seconds)}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT)
        try:
            code: int | None = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        self.seconds.append({"state": str(state), "exit": code})
        self._record("second-daemon", f"exited with {code}" if code is not None else "still running after 90 s", [])

    FAULTS: dict[str, Callable[["Run"], None]] = {
        "kill-9-worker": kill_worker, "kill-9-daemon": kill_daemon, "cancel": cancel,
        "state-disk-full": disk_full, "outbox-immutable": outbox_unwritable, "linked-job-folder": link_job,
        "second-daemon": second_daemon}

    # -- one round --------------------------------------------------------------------------------------

    def play(self, n_folders: int, n_faults: int) -> None:
        kinds = self.rng.choices(["fast", "slow-posed", "slow-unposed"], weights=[6, 2, 1], k=n_folders)
        n_bad = max(1, n_folders // 8)
        kinds[:n_bad] = self.rng.sample(sorted(BAD), k=min(n_bad, len(BAD)))
        if n_folders >= 3:  # every round has a folder with FIFOs and a slow copy without poses
            kinds[n_bad:n_bad + 2] = ["fifo", "slow-unposed"]
        self.rng.shuffle(kinds)
        for kind in kinds:  # a burst: everything at once
            self.drop(kind)
        redropped = self.redrop() if self.round > 1 else None
        # every kind in turn (a shuffled cycle), so a short run still covers each; where and when is random
        cycle = sorted(self.FAULTS) * (n_faults // len(self.FAULTS) + 1)
        faults = cycle[:n_faults]
        self.rng.shuffle(faults)
        for kind in faults:
            time.sleep(self.rng.uniform(0.5, 4.0))
            self.watchdog()
            self.FAULTS[kind](self)
        for t in self.threads:
            t.join()
        self.threads = []
        mine = [f.name for f in self.folders.values()]
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            self.watchdog()
            jobs = self.jobs()
            if all(n in jobs and ended(jobs[n]) for n in mine):
                break
            time.sleep(1)
        if redropped:  # the refusal is logged once the re-dropped folder settled
            job = self.jobs().get(redropped)
            end = time.monotonic() + 30
            while job and time.monotonic() < end and "redrop-ignored" not in self.events(job["id"]):
                time.sleep(0.5)

    # -- invariants -------------------------------------------------------------------------------------

    def check(self, opened: list[str]) -> list[str]:
        """Every breach of the invariants, with the daemon stopped."""
        bad: list[str] = []
        jobs = self.jobs()
        ledger = Ledger(self.state / "ledger.db")
        try:
            rows = ledger.jobs()
            by_folder: dict[str, int] = {}
            for j in rows:
                by_folder[j.folder] = by_folder.get(j.folder, 0) + 1
            events = {j.id: [e["kind"] for e in ledger.events(j.id)] for j in rows}
            link_events = ledger.daemon_event_data("link-refused")
        finally:
            ledger.close()
        for name, f in self.folders.items():
            n = by_folder.get(name, 0)
            if n != 1:
                bad.append(f"{name}: {n} jobs")
                continue
            job = jobs[name]
            if not ended(job):
                bad.append(f"{name}: not ended ({job['state']})")
                continue
            out = self.outbox / job["id"]
            if job["state"] == "done" and not ((out / "mesh.glb").exists() and (out / "report.html").exists()):
                bad.append(f"{name}: done without mesh and report")
            if job["state"] != "done" and not (out / "report.html").exists():
                bad.append(f"{name}: {job['state']} without a report")
            expect, needle = BAD.get(f.kind, ("done", None))
            if expect == "done" and job["state"] != "done" and not f.faulted:
                bad.append(f"{name} ({f.kind}): {job['state']} with no injected fault: {job['error']}")
            if expect == "failed" and (job["state"] != "failed" or needle not in (job["error"] or "")) \
                    and "cancel" not in f.faulted:
                bad.append(f"{name} ({f.kind}): expected failed with {needle!r}, got {job['state']}: {job['error']}")
            if f.redropped and "redrop-ignored" not in events[job["id"]]:
                bad.append(f"{name}: re-dropped with new content, but no refusal was recorded")
            # no folder that was not dropped again may look re-dropped: a slow copy whose job ran on part of it
            # (an unposed copy has no list of files to wait for) is run again with all of it instead
            if "cancel" not in f.faulted and not f.redropped and "redrop-ignored" in events[job["id"]]:
                bad.append(f"{name} ({f.kind}): refused as a re-drop, but it was never dropped again")
            if f.kind in GOOD and job["state"] == "done" and not f.redropped \
                    and job["fingerprint"] != fingerprint(snapshot(self.inbox / name)):
                bad.append(f"{name} ({f.kind}): done on part of the folder (its fingerprint is not the folder's)")
            if f.kind == "fifo" and job["state"] == "done" \
                    and "named pipe (FIFO)" not in (out / "report.html").read_text(errors="replace"):
                bad.append(f"{name} (fifo): done, but the report does not list the FIFOs as not used")
        for link in self.links:
            if by_folder.get(link):
                bad.append(f"{link}: a symbolic link to a folder outside the inbox became a job")
            elif not any(link == e.get("folder") for e in link_events):
                bad.append(f"{link}: a linked folder was not refused visibly (no link-refused event)")
        for second in self.seconds:
            if second["exit"] != 3:
                bad.append(f"a second daemon on the same inbox did not stop at once (exit {second['exit']})")
            if (Path(second["state"]) / "ledger.db").exists():
                try:
                    other = Ledger(Path(second["state"]) / "ledger.db")
                    n = len(other.jobs())
                    other.close()
                except LedgerError:
                    n = 0
                if n:
                    bad.append(f"a second daemon on the same inbox made {n} job(s)")
        extra = set(by_folder) - set(self.folders)
        if extra:
            bad.append(f"jobs for folders never dropped: {sorted(extra)}")
        hidden = hidden_entries(self.outbox)
        if hidden:
            bad.append(f"hidden entries left in the outbox: {hidden}")
        conn = sqlite3.connect(f"file:{self.state / 'ledger.db'}?mode=ro", uri=True)
        try:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
        if integrity != "ok":
            bad.append(f"ledger integrity: {integrity}")
        if opened:
            bad.append(f"files opened outside the inbox: {sorted(set(opened))}")
        return bad


def ended(job: dict[str, Any]) -> bool:
    return job.get("state") in ("done", "failed", "cancelled")


def summarize(run: Run, rounds: list[dict[str, Any]], seconds: float, seed: int, args: argparse.Namespace,
              use_tmpfs: bool) -> dict[str, Any]:
    jobs = run.jobs()
    outcomes: dict[str, int] = {}
    by_reason = {"bad input (expected)": 0, "injected fault": 0}
    for name, f in run.folders.items():
        state = jobs.get(name, {}).get("state", "missing")
        outcomes[state] = outcomes.get(state, 0) + 1
        if state != "done":
            expected_failure = BAD.get(f.kind, ("done", None))[0] == "failed"
            by_reason["bad input (expected)" if expected_failure else "injected fault"] += 1
    faults: dict[str, int] = {}
    for flt in run.faults:
        faults[flt.kind] = faults.get(flt.kind, 0) + 1
    violations = [v for r in rounds for v in r["violations"]]
    return {
        "benchmark": "chaos", "card": card(), "date": time.strftime("%Y-%m-%d"), "seed": seed,
        "command": f"python bench/chaos.py --rounds {args.rounds} --seed {seed} --burst {args.burst} "
                   f"--faults {args.faults} "
                   f"--per-round {args.per_round}",
        "rounds": len(rounds), "seconds": round(seconds, 1), "folders": len(run.folders), "jobs": len(jobs),
        "faults_total": len(run.faults), "faults": faults, "tmpfs_and_chattr": use_tmpfs,
        "daemon_starts": run.starts, "daemon_exits_unexpected": run.unexpected_exits,
        "outcomes": outcomes, "not_done_because": by_reason, "lost": len(violations) + run.unexpected_exits,
        "violations": violations, "settings": SETTINGS, "per_round": rounds,
        "fault_log": [asdict(f) for f in run.faults],
        "kinds": {k: sum(1 for f in run.folders.values() if f.kind == k) for k in (*GOOD, *BAD)},
        "redropped": sum(1 for f in run.folders.values() if f.redropped),
        "linked_job_folders": len(run.links), "second_daemons": run.seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--burst", type=int, default=50, help="folders dropped in round 1")
    ap.add_argument("--per-round", type=int, default=8, help="folders dropped in each later round")
    ap.add_argument("--faults", type=int, default=5, help="faults injected per round")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--keep", action="store_true", help="keep the run's folders (printed) for a post-mortem")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hotmesh-chaos-"))
    use_tmpfs = os.geteuid() == 0
    t0 = time.monotonic()
    rounds: list[dict[str, Any]] = []
    with state_volume(root / "state", use_tmpfs) as use_tmpfs:
        run = Run(root, args.seed, use_tmpfs)
        with OpenWatch(run.bait) as opened:
            run.start()
            for r in range(1, args.rounds + 1):
                run.round = r
                n = args.burst if r == 1 else args.per_round
                print(f"round {r}: {n} folders, {args.faults} faults", flush=True)
                before, started = len(run.faults), time.monotonic()
                run.play(n, args.faults)
                kill = r % 2 == 0  # every other round ends with kill -9: the next start must recover
                run.stop(kill=kill)
                OpenWatch.settle()
                violations = run.check(opened.files)
                rounds.append({"round": r, "folders": n, "faults": len(run.faults) - before,
                               "seconds": round(time.monotonic() - started, 1),
                               "ended_by": "kill -9" if kill else "SIGTERM", "violations": violations})
                print(f"  round {r}: {len(violations)} violation(s) {violations[:3]}", flush=True)
                run.start()
            run.stop()
        result = summarize(run, rounds, time.monotonic() - t0, args.seed, args, use_tmpfs)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "chaos-cpu.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_round", "fault_log", "settings")}, indent=1))
    print(f"{result['rounds']} rounds, {result['faults_total']} faults, {result['lost']} lost -> {path}")
    if args.keep:
        print(f"kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def state_volume(path: Path, want: bool) -> Iterator[bool]:
    """The state folder on a small tmpfs (so it can be filled) when this process may mount one."""
    with contextlib.ExitStack() as stack:
        mounted = False
        if want:
            try:
                stack.enter_context(tmpfs(path, 512))
                mounted = True
            except FaultUnavailable as e:
                print(f"no tmpfs ({e}): the disk and outbox faults are skipped", flush=True)
        yield mounted


if __name__ == "__main__":
    main()
