"""hotmesh command line: run | status | process | demo | cancel | retry | logs | clean | ledger.

Every error a user can act on ends as one line on stderr that says what to do (see :func:`main`); tracebacks
are for bugs."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from daemon import __version__
from daemon.config import Settings, load_settings
from daemon.ledger import LedgerError
from daemon.folders import (FOLDER_ENV, STAGES_TEXT, STATE_BESIDE_OUTBOX, Folders, no_ledger_message,
                            resolve_folders, saved_paths)
from daemon.progress import ProgressPrinter, describe, stage_progress, watch_status
from pipeline.stage_names import CHECKPOINTED_STAGES

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "spot"
# The demo's settings: keys that apply only without a GPU, so a GPU demo runs exactly the defaults. The sample's
# photos are 256 px: a 128-voxel hull and a 512² texture of 30 000 faces lose nothing visible there (the F-score
# against the sample's gt.ply stays 0.96) and take about half the CPU time of the defaults (192 voxels, 1024²,
# 60 000 faces). --set after them wins.
DEMO_SETTINGS = ("geometry.cpu_voxel_resolution=128", "texture.cpu_size=512", "texture.cpu_max_faces=30000")


def _parse_sets(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        out.setdefault(section.strip(), {})[name.strip()] = value.strip()
    return out


def _settings(args: argparse.Namespace) -> Settings:
    cli: dict[str, dict[str, Any]] = _parse_sets(getattr(args, "set", None) or [])
    if getattr(args, "settle_seconds", None) is not None:
        cli.setdefault("intake", {})["settle_seconds"] = args.settle_seconds
    if getattr(args, "device", None):
        cli.setdefault("jobs", {})["device"] = args.device
    if getattr(args, "executor", None):
        cli.setdefault("executor", {})["kind"] = args.executor
    if getattr(args, "ray_address", None):
        cli.setdefault("executor", {})["ray_address"] = args.ray_address
    config = getattr(args, "config", None) or os.environ.get("HOTMESH_CONFIG")
    try:
        return load_settings(Path(config) if config else None, cli=cli)
    except ValueError as e:
        raise SystemExit(f"hotmesh: {e}") from None


def folders_from(args: argparse.Namespace) -> Folders:
    """The folders of this command line (flags, environment, --config / HOTMESH_CONFIG, defaults)."""
    config: Mapping[str, str] = dataclasses.asdict(_settings(args).paths)
    flags = {n: getattr(args, n, None) for n in FOLDER_ENV}
    return resolve_folders(flags, os.environ, config, Path.cwd(), saved_paths)


def _add_folder_args(p: argparse.ArgumentParser, config: bool = True) -> None:
    """The flags every subcommand finds its folders with (see resolve_folders)."""
    p.add_argument("--state", help="state folder with the ledger (HOTMESH_STATE, config paths.state; default: "
                   "<outbox>/../hotmesh-state)")
    p.add_argument("--outbox", help="outbox (HOTMESH_OUTBOX, config paths.outbox; default ./outbox); also locates the "
                   "default state folder next to it")
    p.add_argument("--inbox", help="inbox (HOTMESH_INBOX, config paths.inbox; default: as the daemon recorded it)")
    if config:
        p.add_argument("--config", help="TOML config file (also HOTMESH_CONFIG); its [paths] section names the folders")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (also HOTMESH_CONFIG)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set geometry.voxel_resolution=128 (repeatable)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where jobs run (jobs.device)")


def _setup_logging(verbose: bool, json_logs: bool = False, secrets: tuple[str, ...] = ()) -> None:
    from pipeline.io.redact import install_scrubber

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if json_logs:
        from daemon.ops import JsonFormatter

        for h in logging.getLogger().handlers:
            h.setFormatter(JsonFormatter())
    install_scrubber(logging.getLogger().handlers, secrets)  # no secret reaches the log, whoever logs it
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per rescan is noise


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.executors import ExecutorUnavailable
    from daemon.locks import AlreadyRunning
    from daemon.service import Daemon
    from daemon.worker import Paths

    settings = _settings(args)
    _setup_logging(args.verbose, settings.ops.json_logs, settings.secrets())
    folders = folders_from(args)
    logging.getLogger("hotmesh").info("folders: %s", folders.describe())
    daemon = Daemon(Paths(folders.inbox, folders.outbox, folders.state), settings,
                    gpus=args.gpus or os.environ.get("HOTMESH_GPUS", "auto"))
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    try:
        daemon.run()
    except (AlreadyRunning, ExecutorUnavailable, LedgerError) as e:
        print(f"hotmesh: {e}", file=sys.stderr)
        return 3
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from daemon.ledger import Ledger

    folders = folders_from(args)
    if args.watch or args.once:
        return watch_status(folders, args.interval, args.once)
    if not folders.ledger.exists():
        if args.json:
            print("[]")
            print(f"hotmesh: {no_ledger_message(folders)}", file=sys.stderr)
        else:
            print(no_ledger_message(folders))
        return 0
    ledger = Ledger(folders.ledger)
    ahead = unwritten_states(folders.outbox)
    jobs = [ahead.get(j.id, j) for j in ledger.jobs()]
    notices = current_notices(ledger, jobs)
    if args.json:
        rows = []
        for j in jobs:
            row = j.to_dict() | ({"events": ledger.events(j.id)} if args.events else {})
            if j.id in notices:
                row["notice"] = notices[j.id]
            if j.id in ahead:
                row["ledger_behind"] = True
            rows.append(row)
        print(json.dumps(rows, indent=1))
        return 0
    print(f"state folder: {folders.state} ({folders.origin['state']})")
    if ahead:
        print(f"the daemon cannot write the ledger now (see outbox/_status/{DAEMON_STATUS_FILE}); jobs marked * show "
              f"the state it keeps in memory and will write, as their status files do")
    print(f"{'JOB':28} {'STATE':10} {'STAGE':10} {'PROG':>6} {'TRY':>3}  ERROR / OUTPUT")
    for j in jobs:
        extra = (j.error or "").splitlines()[0][:70] if j.error else j.outputs.get("report", "")
        if j.outputs.get("evaluated") is False:
            extra += "  (not evaluated: no held-out view)"
        if j.state.value == "running":
            extra = describe(stage_progress(j.stage, j.progress, j.started, j.timings, time.time()))
        state = j.state.value + ("*" if j.id in ahead else "")
        print(f"{j.id[:28]:28} {state:10} {(j.stage or '-')[:10]:10} {j.progress:5.1f}% {j.attempts:3d}  {extra}")
        if j.id in notices:
            print(f"    notice: {notices[j.id]}")
        if args.events:
            for e in ledger.events(j.id):
                print(f"    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e['ts']))} {e['kind']:16} {e['message']}")
    counts = ledger.counts()
    line = "  ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no jobs"
    unevaluated = sum(1 for j in jobs if j.outputs.get("evaluated") is False)
    print(line + (f"  ({unevaluated} done without a held-out evaluation)" if unevaluated else ""))
    return 0


DAEMON_STATUS_FILE = "_daemon.json"  # daemon.service.DAEMON_STATUS (not imported: it pulls in watchdog)


def current_notices(ledger: Any, jobs: list[Any]) -> dict[str, str]:
    """Job id -> the re-drop notice still standing for it (given after the job last ended; a retry or rerun since
    has answered it), as the status file shows it."""
    out: dict[str, str] = {}
    for job_id, ev in ledger.latest_event_rows("redrop-ignored").items():
        job = next((j for j in jobs if j.id == job_id), None)
        if job is not None and job.state.terminal and job.finished is not None and ev["ts"] >= job.finished:
            out[job_id] = ev["message"]
    return out


def unwritten_states(outbox: Path) -> dict[str, Any]:
    """While the daemon cannot write the ledger (a full state disk), the jobs whose state changed meanwhile, as
    their status files have them (the daemon writes those from the state it keeps in memory): job id -> Job. Empty
    when the daemon says its ledger is up to date. `status` would otherwise show a job running that the status
    file shows queued again."""
    from daemon.ledger import Job

    try:
        daemon = json.loads((outbox / "_status" / DAEMON_STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if daemon.get("ledger_ok", True) and not daemon.get("pending_writes"):
        return {}
    out: dict[str, Any] = {}
    for path in sorted((outbox / "_status").glob("*.json")):
        if path.name == DAEMON_STATUS_FILE:
            continue
        try:
            d = json.loads(path.read_text())
            out[path.stem] = Job.from_row(d | {"fingerprint": None, "timings": json.dumps(d.get("timings") or {}),
                                               "outputs": json.dumps(d.get("outputs") or {})})
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def _folder_paths(args: argparse.Namespace):
    """An installation's folders, found as every subcommand finds them (folders_from)."""
    from daemon.worker import Paths

    folders = folders_from(args)
    return Paths(inbox=folders.inbox, outbox=folders.outbox, state=folders.state)


def _ops_context(args: argparse.Namespace):
    """Ledger and folders of an installation, for commands that act while the daemon runs."""
    from daemon.ledger import Ledger

    folders = folders_from(args)
    if not folders.ledger.exists():
        raise SystemExit(f"hotmesh: {no_ledger_message(folders)}")
    return Ledger(folders.ledger), _folder_paths(args)


def _job_or_exit(ledger, job_id: str):
    job = ledger.get(job_id)
    if job is None:
        raise SystemExit(f"hotmesh: no job {job_id!r} in the ledger (see hotmesh status)")
    return job


def cmd_cancel(args: argparse.Namespace) -> int:
    """Drop CANCEL markers: the daemon/worker acts on them (queued: at once; running: at the next check)."""
    from pipeline.context import CANCEL_MARKER

    ledger, paths = _ops_context(args)
    job = _job_or_exit(ledger, args.job)
    if job.state.terminal:
        print(f"job {job.id} is already {job.state.value}")
        return 1
    work = paths.work_dir(job.id)
    work.mkdir(parents=True, exist_ok=True)
    (work / CANCEL_MARKER).write_text("hotmesh cancel\n")
    try:
        (paths.inbox / job.folder / CANCEL_MARKER).write_text("hotmesh cancel\n")
    except OSError:
        pass  # read-only inbox: the marker in the state folder is enough
    try:
        ledger.event(job.id, "cancel-requested", "cancel requested with hotmesh cancel")
    except LedgerError as e:  # the markers are what cancels; the event is only history
        print(f"note: the request is not in the job's history ({e})", file=sys.stderr)
    print(f"cancel requested for {job.id} ({job.state.value}, stage {job.stage or '-'})")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    import shutil as _shutil

    from pipeline.context import CANCEL_MARKER

    # checked first: needs no ledger. The names come from pipeline.stage_names, not the runner, which would import
    # torch and every stage (tens of seconds on a loaded machine) for a command that only edits the ledger
    if args.from_stage and args.from_stage not in CHECKPOINTED_STAGES:
        raise SystemExit(f"hotmesh: unknown stage {args.from_stage!r}; the stages, in order: {STAGES_TEXT}")
    ledger, paths = _ops_context(args)
    job = _job_or_exit(ledger, args.job)
    if not job.state.terminal:
        print(f"job {job.id} is {job.state.value}; only done, failed or cancelled jobs can be retried")
        return 1
    for marker in (paths.work_dir(job.id) / CANCEL_MARKER, paths.inbox / job.folder / CANCEL_MARKER):
        marker.unlink(missing_ok=True)
    if args.from_stage:
        for name in CHECKPOINTED_STAGES[CHECKPOINTED_STAGES.index(args.from_stage):]:
            _shutil.rmtree(paths.work_dir(job.id) / "stages" / name, ignore_errors=True)
    from daemon.intake import fingerprint, snapshot

    # the first stage's checkpoint is keyed by the folder's content: a folder re-dropped with new files reruns
    folder = paths.inbox / job.folder
    now_fp = fingerprint(snapshot(folder)) if folder.is_dir() else None
    changed = now_fp is not None and now_fp != job.fingerprint
    reason = (f"hotmesh retry{' --from-stage ' + args.from_stage if args.from_stage else ''} (was {job.state.value})"
              + ("; the inbox folder has new content, so it runs from the start" if changed else ""))
    if not ledger.retry(job.id, reason, fingerprint=now_fp if changed else None):
        print(f"job {job.id} changed state meanwhile; nothing done")
        return 1
    print(f"{job.id} queued again" + (f", rerunning from stage {args.from_stage}" if args.from_stage else
                                        ", with the folder's new content" if changed else
                                        " (completed stages are reused from checkpoints)"))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    ledger, paths = _ops_context(args)
    job = _job_or_exit(ledger, args.job)
    for p in (paths.work_dir(job.id) / "job.log", paths.outbox / job.id / "job.log"):
        if p.exists():
            print(p.read_text(), end="")
            break
    else:
        print(f"(no job.log for {job.id})")
    if args.events:
        for e in ledger.events(job.id):
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e['ts']))} {e['kind']:16} {e['message']}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from daemon.ops import apply_retention, plan_retention

    ledger, paths = _ops_context(args)
    settings = _settings(args)
    actions = plan_retention(ledger.jobs(), settings.ops, paths, time.time())
    for a in actions:
        print(f"{'would ' if args.dry_run else ''}{a.what:13} {a.job_id:24} {a.path}")
    if not actions:
        print("nothing to clean")
    elif not args.dry_run:
        apply_retention(ledger, actions, paths)
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    """check: is ledger.db readable and consistent (and its backup)? rebuild: replace it from the folders."""
    from daemon.repair import backup_path, check_ledger, rebuild_ledger

    paths = _folder_paths(args)
    state = paths.state
    path = state / "ledger.db"
    if args.action == "check":
        result = check_ledger(path)
        if result.ok:
            jobs = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items())) or "no jobs"
            print(f"{path}: ok ({jobs})")
        else:
            print(f"{path}: damaged: {'; '.join(result.problems)}")
        bak = backup_path(path)
        if bak.exists():
            backup = check_ledger(bak)
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(bak.stat().st_mtime))
            print(f"{bak}: {'ok' if backup.ok else 'damaged: ' + '; '.join(backup.problems)} (from {when})")
        else:
            backup = None
            print(f"{bak}: no backup yet (the daemon writes one when it starts)")
        if not result.ok:
            hint = " --from-backup" if backup is not None and backup.ok else ""
            print(f"to repair: stop the daemon, then run `hotmesh ledger rebuild{hint} --state {state}`; it keeps the "
                  f"damaged file and restores every job from {'the backup and ' if hint else ''}the outbox's status "
                  f"files and reports")
        return 0 if result.ok else 1
    report = rebuild_ledger(paths, from_backup=args.from_backup)
    restored = ", ".join(f"{k} {v}" for k, v in sorted(report.restored.items())) or "none"
    total = ", ".join(f"{k} {v}" for k, v in sorted(report.total.items())) or "no jobs"
    print(f"rebuilt {path}{' from its backup and' if report.from_backup else ' from'} the outbox and state folders")
    print(f"  jobs restored from files: {restored}; the ledger now has: {total}")
    if report.moved_aside:
        print(f"  the old file is kept as {', '.join(report.moved_aside)}")
    for s_ in report.skipped:
        print(f"  skipped {s_}")
    print("  queued and running jobs were queued again and resume from their checkpoints; inbox folders without a "
          "job become jobs again when the daemon starts")
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    """One job without the daemon: same ledger, same stages, same outbox layout."""
    from daemon.intake import fingerprint, snapshot
    from daemon.ledger import Ledger
    from daemon.states import JobState
    from daemon.worker import Paths, execute, pick_device

    settings = _settings(args)
    _setup_logging(args.verbose, secrets=settings.secrets())
    folder = Path(args.folder).resolve()
    if not folder.is_dir():
        raise SystemExit(f"hotmesh: {folder} is not a folder")
    out = Path(args.out).resolve()
    # the state folder: --state, else a temporary one that is removed at the end (checkpoints are large)
    temporary = not args.state
    state = Path(args.state).resolve() if args.state else Path(tempfile.mkdtemp(prefix="hotmesh-state-"))
    keep = not temporary or args.keep_state
    print(f"hotmesh: state folder {state} ({'--state' if not temporary else 'temporary, kept (--keep-state)' if keep else 'temporary, removed at the end; --keep-state keeps it'})",
          file=sys.stderr, flush=True)
    paths = Paths(inbox=folder.parent, outbox=out, state=state)
    ledger = Ledger(paths.ledger)
    try:
        job, created = ledger.create_job(folder.name, fingerprint(snapshot(folder)))
        if not created and job.state != JobState.QUEUED:
            ledger.requeue(job.id, "hotmesh process: run again")
        claimed = ledger.claim_next(worker=f"process:{os.getpid()}")
        if claimed is None:
            raise SystemExit("hotmesh: could not claim the job")
        # a line on stderr whenever the stage changes and every few seconds in between: a CPU job's long stages
        # must not look like a hang
        printer = ProgressPrinter(lambda line: print(f"hotmesh: {claimed.id}: {line}", file=sys.stderr, flush=True))
        beating = threading.Event()
        threading.Thread(target=printer.heartbeat, args=(beating,), daemon=True).start()
        try:
            state_name = execute(ledger, paths, claimed, settings, pick_device(settings.jobs.device),
                                 on_job=printer.update)
        finally:
            beating.set()
        final = ledger.get(claimed.id)
    finally:
        ledger.close()
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
    report = out / claimed.id / "report.html"
    print(json.dumps({"job": claimed.id, "state": state_name, "error": final.error if final else None,
                      "report": str(report) if report.exists() else None, "state_folder": str(state),
                      "state_kept": keep}, indent=1))
    return 0 if state_name == "done" else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a real daemon on temporary folders, drop the bundled sample into its inbox, wait, print the report."""
    if not (SAMPLE / "transforms.json").exists():
        raise SystemExit(f"hotmesh: bundled sample missing at {SAMPLE}")
    root = Path(args.dir).resolve() if args.dir else Path(tempfile.mkdtemp(prefix="hotmesh-demo-"))
    # the layout `run` uses by default (state next to the outbox), so `hotmesh status --outbox ROOT/outbox` finds it
    inbox, outbox, state = root / "inbox", root / "outbox", root / STATE_BESIDE_OUTBOX
    for d in (inbox, outbox, state):
        d.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "daemon.cli", "run", "--inbox", str(inbox), "--outbox", str(outbox),
           "--state", str(state), "--settle-seconds", "1"]
    for s in (*DEMO_SETTINGS, *(args.set or [])):
        cmd += ["--set", s]
    if args.device:
        cmd += ["--device", args.device]
    print(f"demo folder: {root}\nstarting: {' '.join(cmd)}", flush=True)
    daemon = subprocess.Popen(cmd, cwd=str(REPO))
    try:
        # drop the sample the way users do: copy next to the inbox, then move it in with one rename
        staging = root / "staging" / "spot"
        shutil.copytree(SAMPLE, staging, dirs_exist_ok=True)
        staging.rename(inbox / "spot")
        print("dropped samples/spot into the inbox; waiting for the job…", flush=True)
        status = outbox / "_status" / "spot.json"
        deadline = time.monotonic() + args.timeout
        printer = ProgressPrinter(lambda line: print("  " + line, flush=True))
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                raise SystemExit(f"hotmesh: the daemon exited early with code {daemon.returncode}")
            try:
                st = json.loads(status.read_text())
            except (OSError, ValueError):
                st = {}
            printer.update_status(st, time.time())
            if st.get("state") in ("done", "failed", "cancelled"):
                report = outbox / "spot" / "report.html"
                if st["state"] != "done":
                    print(f"job {st['state']}: {st.get('error')}")
                print(f"jobs: hotmesh status --state {state}")
                print(f"report: {report}")
                return 0 if st["state"] == "done" else 1
            time.sleep(1)
        print("hotmesh: demo timed out", file=sys.stderr)
        return 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hotmesh", description="Hot-folder daemon: photos of an object in, a "
                                "validated 3D mesh and an HTML quality report out.")
    p.add_argument("--version", action="version", version=f"hotmesh {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the daemon in the foreground (SIGTERM/SIGINT stop it cleanly)")
    r.add_argument("--inbox", help="folder users drop job folders into (HOTMESH_INBOX, config paths.inbox; default ./inbox)")
    r.add_argument("--outbox", help="folder results are published to (HOTMESH_OUTBOX, config paths.outbox; default ./outbox)")
    r.add_argument("--state", help="ledger, checkpoints and logs (HOTMESH_STATE, config paths.state; default: <outbox>/../hotmesh-state)")
    r.add_argument("--gpus", help="'auto' (default), 'cpu', or GPU ids like 0,1: one worker per entry (HOTMESH_GPUS)")
    r.add_argument("--executor", choices=["local", "ray"],
                   help="local: worker processes on this host (default); ray: Ray tasks on a cluster (executor.kind)")
    r.add_argument("--ray-address", help="HOST:PORT of the Ray cluster, 'auto', or 'local' (executor.ray_address)")
    r.add_argument("--settle-seconds", type=float, help="quiet time before a folder becomes a job (intake.settle_seconds)")
    r.add_argument("-v", "--verbose", action="store_true")
    _add_common(r)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="list jobs from the ledger (--watch: live progress bars)")
    _add_folder_args(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--events", action="store_true", help="include each job's event history")
    s.add_argument("--watch", action="store_true", help="live progress bars for running jobs until Ctrl-C")
    s.add_argument("--interval", type=float, default=1.0, help="--watch: seconds between refreshes (default 1)")
    s.add_argument("--once", action="store_true", help="draw the --watch view once and exit")
    s.set_defaults(func=cmd_status)

    pr = sub.add_parser("process", help="process one folder without the daemon")
    pr.add_argument("folder", help="a job folder: photos (or videos), optionally transforms.json or a COLMAP model, "
                    "masks/, scale.json (the README's Inputs)")
    pr.add_argument("--out", required=True, help="outbox to publish into (result in OUT/<job>/)")
    pr.add_argument("--state", help="state folder (default: a new temporary one, removed at the end)")
    pr.add_argument("--keep-state", action="store_true", help="keep the temporary state folder (its path is printed)")
    pr.add_argument("-v", "--verbose", action="store_true")
    _add_common(pr)
    pr.set_defaults(func=cmd_process)

    for name, func, text in (("cancel", cmd_cancel, "cancel a queued or running job (through its CANCEL markers)"),
                             ("retry", cmd_retry, "queue a finished, failed or cancelled job again"),
                             ("logs", cmd_logs, "print a job's log")):
        c = sub.add_parser(name, help=text)
        c.add_argument("job", help="job id (see hotmesh status)")
        _add_folder_args(c)
        c.set_defaults(func=func)
        if name == "retry":
            c.add_argument("--from-stage", metavar="STAGE", help="delete this stage's checkpoint and every later one "
                           f"first; stages: {STAGES_TEXT}")
        if name == "logs":
            c.add_argument("--events", action="store_true", help="also print the job's ledger events")
    cl = sub.add_parser("clean", help="apply the retention rules now (ops.* settings)")
    _add_folder_args(cl, config=False)  # --config comes with _add_common below
    cl.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    _add_common(cl)
    cl.set_defaults(func=cmd_clean)

    lg = sub.add_parser("ledger", help="check the job ledger, or rebuild a damaged one from the outbox and state folders")
    lg.add_argument("action", choices=["check", "rebuild"])
    lg.add_argument("--state", help="state folder (HOTMESH_STATE)")
    lg.add_argument("--outbox", help="outbox (default: the daemon's, from <state>/paths.json)")
    lg.add_argument("--inbox", help="inbox (default: the daemon's, from <state>/paths.json)")
    lg.add_argument("--from-backup", action="store_true",
                    help="rebuild: start from the daemon's last backup (<state>/ledger.db.bak), then add what the "
                         "folders know that is newer")
    lg.set_defaults(func=cmd_ledger)

    d = sub.add_parser("demo", help="run a real daemon on the bundled sample and print the report path")
    d.add_argument("--dir", help="where to create inbox/outbox/state (default: a new temporary folder)")
    d.add_argument("--timeout", type=float, default=600, help="seconds to wait for the job")
    d.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="setting passed to the daemon")
    d.add_argument("--device", choices=["auto", "cpu", "cuda"])
    d.set_defaults(func=cmd_demo, config=None)
    return p


def describe_os_error(e: OSError) -> str:
    where = f" {e.filename}" if e.filename else ""
    return (f"cannot use{where}: {e.strerror or e}. Check that it exists, that this user may read and write it, "
            f"and that its disk is not full")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Conditions the code can name (a damaged or unwritable ledger, a repair that cannot go
    ahead, a folder that cannot be used) end as one sentence on stderr with what to do, never a traceback."""
    from daemon.repair import RepairError

    args = build_parser().parse_args(argv)
    # every subcommand checks the configuration the same way (file, HOTMESH_* environment, --set) before it acts:
    # `status` with a value `process` refuses, or a misspelt variable, must not pass silently
    _settings(args)
    try:
        return int(args.func(args) or 0)
    except (LedgerError, RepairError) as e:
        print(f"hotmesh: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"hotmesh: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
