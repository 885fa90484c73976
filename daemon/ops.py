"""Running unattended: retention, disk guard, notifications, health/metrics endpoint, JSON logs."""
from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import logging
import os
import queue
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from daemon.config import OpsConfig
from daemon.ledger import Job, Ledger, LedgerError
from daemon.states import JobState
from pipeline.io.files import open_regular, regular_file
from pipeline.io.redact import redact_url, scrub, secret_values
from pipeline.settings import PipelineSettings

log = logging.getLogger("hotmesh.ops")
DONE_DIR = "_done"
DAY = 86400.0


# -- retention ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    job_id: str
    what: str  # "state" | "outbox" | "inbox-move" | "inbox-delete"
    path: str


def plan_retention(jobs: list[Job], cfg: OpsConfig, paths: Any, now: float) -> list[Action]:
    """What the cleanup would do now. Only jobs in a terminal state are ever touched."""
    actions: list[Action] = []
    for job in jobs:
        if not job.state.terminal or job.finished is None:
            continue
        age = now - job.finished
        work = paths.work_dir(job.id)
        if cfg.state_retention_days >= 0 and age >= cfg.state_retention_days * DAY and work.exists():
            actions.append(Action(job.id, "state", str(work)))
        out = paths.outbox / job.id
        if cfg.outbox_retention_days >= 0 and age >= cfg.outbox_retention_days * DAY and out.exists():
            actions.append(Action(job.id, "outbox", str(out)))
        src = paths.inbox / job.folder
        if cfg.inbox_after in ("move", "delete") and age >= cfg.inbox_after_days * DAY and src.exists():
            actions.append(Action(job.id, f"inbox-{cfg.inbox_after}", str(src)))
    return actions


def apply_retention(ledger: Ledger, actions: list[Action], paths: Any) -> None:
    """Carry out ``actions``; each one is recorded in the ledger's events."""
    for a in actions:
        p = Path(a.path)
        try:
            if a.what == "inbox-move":
                dst = paths.inbox / DONE_DIR / p.name
                if dst.exists():
                    dst = dst.with_name(f"{p.name}.{int(time.time())}")
                dst.parent.mkdir(parents=True, exist_ok=True)
                p.rename(dst)
                ledger.event(a.job_id, "retention", f"moved inbox folder to {dst}", {"path": str(p)})
            else:
                shutil.rmtree(p)
                ledger.event(a.job_id, "retention", f"deleted {a.what} folder {p}", {"path": str(p)})
        except OSError as e:
            ledger.event(a.job_id, "retention-error", f"could not clean {p}: {e}", {"path": str(p)})


# -- disk guard -----------------------------------------------------------------------------------


def free_bytes(path: Path) -> int:
    """Free space on the volume holding ``path`` (the one place tests patch)."""
    return shutil.disk_usage(path).free


# Measured (spot sample, 36 views, voxel_resolution 192, CPU): 59 MB in state + outbox, of which ~50 MB scale
# with the mesh (185k faces: ~270 B per face over the geometry/refine/texture/report checkpoints and the published
# PLY/OBJ/GLB/report) and ~10 MB with the images (~4 B per working pixel). A tiny job (12 views of 64 px, voxel
# resolution 32) used 10 MB. The constants below keep a ~2x margin over both.
BYTES_PER_FACE = 300
BYTES_PER_PIXEL = 10  # working copies (RGB + alpha + mask, compressed ~ raw) in cameras/masks, and the report
BYTES_PER_IMAGE = 256 * 2**10  # thumbnails and per-view data in the report
BYTES_PER_TEXEL = 12  # texture.png in the texture and report checkpoints and the outbox, and inside the GLB
FIXED_BYTES = 8 * 2**20  # report page, stats, logs
FACES_PER_VOXEL2 = 6  # marching cubes of a hull at resolution r: ~5 r^2 faces (measured at r = 32 and 192)


def _image_pixels(folder: Path, max_side: int) -> tuple[int, int]:
    """(working pixels, images) of the folder's images, from their headers (no decode). Only regular files are
    read (lstat first): a link is not followed (the daemon opens no file outside the inbox; ingest refuses such
    links anyway), and a FIFO or device is never opened (the daemon's loop would block on it)."""
    pixels = 0
    images = 0
    for root, _dirs, files in os.walk(folder):  # does not descend into linked folders
        for name in files:
            p = Path(root) / name
            if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff") and regular_file(p, follow=False):
                w_h = _header_size(p)
                if w_h is not None:
                    scale = min(1.0, max_side / max(w_h))
                    pixels += int(w_h[0] * w_h[1] * scale * scale)
                    images += 1
    return pixels, images


def _header_size(p: Path) -> tuple[int, int] | None:
    """(width, height) from an image's header, or None when it is not one (or not a regular file)."""
    from PIL import Image

    try:
        # O_NOFOLLOW and O_NONBLOCK: an entry swapped for a link or a FIFO after the lstat is refused, not waited on
        with open_regular(p, follow=False) as fh, Image.open(fh) as im:  # header only, no decode
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def estimate_job_bytes(folder: Path, settings: PipelineSettings | None = None, gpu: bool = False) -> int:
    """Space a job needs in the state and outbox folders: working copies of the images (count and resolution),
    and the meshes, texture and report, which scale with the settings (hull resolution, face and texture
    limits) rather than with the photos. ``gpu``: jobs run on a GPU (refinement on, the larger texture)."""
    s = settings or PipelineSettings()
    pixels, images = _image_pixels(folder, s.images.max_side)
    faces = min(s.geometry.max_faces, FACES_PER_VOXEL2 * s.geometry.voxel_resolution ** 2)
    if s.refine.enabled == "on" or (gpu and s.refine.enabled == "auto"):
        faces = max(faces, s.refine.max_faces if gpu else s.refine.cpu_faces)
    texels = (s.texture.size if gpu else s.texture.cpu_size) ** 2 if s.texture.enabled else 0
    return (pixels * BYTES_PER_PIXEL + images * BYTES_PER_IMAGE + faces * BYTES_PER_FACE + texels * BYTES_PER_TEXEL
            + FIXED_BYTES)


@dataclass(frozen=True)
class DiskCheck:
    ok: bool
    message: str


def check_disk(volumes: list[Path], need: int, margin_mb: float) -> DiskCheck:
    want = need + int(margin_mb * 2**20)
    for v in volumes:
        free = free_bytes(v)
        if free < want:
            return DiskCheck(False, f"waiting for disk space: {v} has {free / 2**20:.0f} MiB free, the next job needs "
                                    f"~{want / 2**20:.0f} MiB (estimate + ops.min_free_mb); free space there and "
                                    f"it starts by itself")
    return DiskCheck(True, "ok")


# -- notifications --------------------------------------------------------------------------------


WEBHOOK_TOLERANCE_SECONDS = 300  # what a receiver should accept between webhook-timestamp and its own clock
HOOK_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")  # the daemon's environment a command hook gets, and no more


def webhook_key(secret: str) -> bytes:
    """The HMAC key of ``ops.webhook_secret``: a Standard Webhooks secret (``whsec_`` + base64) is decoded as that
    specification says, any other string is used as its UTF-8 bytes."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except ValueError:
            pass  # not base64 after all: the string itself is the key
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks signature: ``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``. The id and the
    time are signed with the body so that a captured delivery cannot be replayed later or under another id."""
    mac = hmac.new(webhook_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` for one delivery attempt."""
    ts = int(time.time() if now is None else now)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sign(secret, msg_id, ts, body)}


def verify_webhook(secret: str, headers: dict[str, str], body: bytes, now: float | None = None,
                   tolerance: float = WEBHOOK_TOLERANCE_SECONDS) -> bool:
    """What a receiver does (the README shows the same in a few lines): the timestamp is within ``tolerance`` of
    its clock and one of the space-separated ``v1,`` signatures matches, compared in constant time."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, ts = h["webhook-id"], int(h["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    expected = sign(secret, msg_id, ts, body)
    return any(hmac.compare_digest(expected, s) for s in h.get("webhook-signature", "").split())


def hook_environment(environ: dict[str, str] | os._Environ, job: Job, outbox: Path) -> dict[str, str]:
    """The command hook's environment: the few variables a shell command needs and the job's. The daemon's own
    environment can hold the webhook secret and URLs (HOTMESH_OPS_*) and cloud credentials: none of it is passed."""
    env = {k: environ[k] for k in HOOK_ENV if k in environ}
    env.update(HOTMESH_JOB_ID=job.id, HOTMESH_JOB_STATE=job.state.value, HOTMESH_JOB_OUTBOX=str(outbox / job.id))
    return env


def job_summary(job: Job, outbox: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {"job": job.id, "folder": job.folder, "state": job.state.value, "error": job.error,
                               "stage": job.stage, "attempts": job.attempts, "finished": job.finished,
                               "outbox": str(outbox / job.id)}
    try:
        stats = json.loads((outbox / job.id / "stats.json").read_text())
        summary["stats"] = {k: stats.get(k) for k in ("quality", "mesh", "files", "timings")}
    except (OSError, ValueError):
        summary["stats"] = None
    return summary


def split_credentials(url: str) -> tuple[str, str | None]:
    """A webhook URL with ``user:password@`` -> the URL without them and a Basic ``Authorization`` header value
    (urllib would otherwise take ``user:password@host`` for the host name)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    user = urllib.parse.unquote(parts.username or "")
    pw = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{pw}".encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), f"Basic {token}"


class Notifier:
    """Webhooks and a command hook on job end, from a background thread: a slow or failing endpoint never
    blocks the daemon or changes a job's outcome. Each delivery and failure is a ledger event."""

    def __init__(self, cfg: OpsConfig, ledger_path: Path, outbox: Path,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = cfg
        self.urls = [u.strip() for u in cfg.webhook_urls.split(",") if u.strip()]
        # URLs may carry credentials or tokens: logs and ledger events name them only by redact_url, and any
        # error text is scrubbed of every secret part
        self.secrets = secret_values([cfg.webhook_secret, cfg.webhook_urls, cfg.command_hook])
        self.ledger_path = ledger_path
        self.outbox = outbox
        self.sleep = sleep
        self.q: queue.Queue[Job | None] = queue.Queue()
        self.thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.urls or self.cfg.command_hook)

    def start(self) -> None:
        if self.enabled:
            self.thread = threading.Thread(target=self._loop, name="hotmesh-notify", daemon=True)
            self.thread.start()

    def job_ended(self, job: Job) -> None:
        if self.enabled:
            self.q.put(job)

    def stop(self, timeout: float = 10.0) -> None:
        if self.thread is not None:
            self.q.put(None)
            self.thread.join(timeout)

    def _loop(self) -> None:
        try:
            ledger: Ledger | None = Ledger(self.ledger_path)  # this thread's own connection
        except LedgerError as e:
            log.error("notifications go out without ledger events: %s", e)
            ledger = None
        while True:
            job = self.q.get()
            if job is None:
                return
            payload = job_summary(job, self.outbox)
            body = json.dumps(payload).encode()
            for url in self.urls:
                self._post(ledger, job, url, body)
            if self.cfg.command_hook:
                self._command(ledger, job, body)

    @staticmethod
    def _record(ledger: Ledger | None, job_id: str, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        """A delivery event, best effort: a ledger that cannot be written (full disk) must not stop notifications."""
        if ledger is None:
            return
        try:
            ledger.event(job_id, kind, message, data)
        except LedgerError as e:
            log.warning("[job %s] %s (event not recorded: %s)", job_id, message, e)

    def _post(self, ledger: Ledger | None, job: Job, url: str, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "X-Hotmesh-Event": f"job.{job.state.value}",
                   "User-Agent": "hotmesh"}
        msg_id = f"{job.id}.{job.state.value}.{int(job.finished or 0)}"  # the same for every retry: receivers dedupe
        target, auth = split_credentials(url)
        if auth:
            headers["Authorization"] = auth
        shown = f"#{self.urls.index(url) + 1} ({redact_url(url)})"
        delay = self.cfg.webhook_backoff_seconds
        for attempt in range(1, self.cfg.webhook_retries + 2):
            try:
                signed = (signed_headers(self.cfg.webhook_secret, msg_id, body) if self.cfg.webhook_secret
                          else {"webhook-id": msg_id})  # signed per try: the timestamp is the try's
                req = urllib.request.Request(target, data=body, headers=headers | signed, method="POST")
                with urllib.request.urlopen(req, timeout=10) as resp:
                    self._record(ledger, job.id, "notified", f"webhook {shown} answered {resp.status} (try {attempt})",
                                 {"url": redact_url(url), "tries": attempt})
                    return
            except (urllib.error.URLError, OSError, ValueError) as e:
                err = scrub(str(e), self.secrets)
                log.warning("[job %s] webhook %s failed (try %d): %s", job.id, shown, attempt, err)
                if attempt > self.cfg.webhook_retries:
                    self._record(ledger, job.id, "notify-failed", f"webhook {shown} failed {attempt} times: {err}",
                                 {"url": redact_url(url), "tries": attempt})
                    return
                self.sleep(delay)
                delay *= 2

    def _command(self, ledger: Ledger | None, job: Job, body: bytes) -> None:
        env = hook_environment(os.environ, job, self.outbox)
        try:
            r = subprocess.run(self.cfg.command_hook, shell=True, input=body, env=env, timeout=120,
                               capture_output=True)
            kind = "notified" if r.returncode == 0 else "notify-failed"
            self._record(ledger, job.id, kind, f"command hook exited {r.returncode}",
                         {"stderr": scrub(r.stderr[-500:].decode(errors="replace"), self.secrets)})
        except (OSError, subprocess.TimeoutExpired) as e:
            self._record(ledger, job.id, "notify-failed", f"command hook failed: {scrub(str(e), self.secrets)}")


# -- health and metrics ---------------------------------------------------------------------------


def gpu_memory() -> list[tuple[str, float, float]]:
    """(index, used MiB, total MiB) per GPU from nvidia-smi; empty without one (the daemon never imports torch)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            try:
                rows.append((parts[0], float(parts[1]), float(parts[2])))
            except ValueError:
                pass
    return rows


class LedgerCollector:
    """Prometheus collector that reads the ledger at scrape time (the ledger is the source of truth)."""

    def __init__(self, ledger_path: Path, status: Callable[[], dict[str, Any]]) -> None:
        self.ledger_path = ledger_path
        self.status = status

    def collect(self):  # noqa: ANN201 (prometheus_client protocol)
        from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily

        try:
            ledger = Ledger(self.ledger_path)
            try:
                counts = ledger.counts()
                jobs = ledger.jobs()
            finally:
                ledger.close()
        except LedgerError as e:  # scrapes keep working (and say so) while the ledger is damaged
            log.warning("metrics without the ledger: %s", e)
            yield GaugeMetricFamily("hotmesh_ledger_readable", "1 when the ledger could be read", value=0)
            return
        yield GaugeMetricFamily("hotmesh_ledger_readable", "1 when the ledger could be read", value=1)
        g = GaugeMetricFamily("hotmesh_jobs", "Jobs in the ledger by state", labels=["state"])
        for state in JobState:
            g.add_metric([state.value], counts.get(state.value, 0))
        yield g
        yield GaugeMetricFamily("hotmesh_queue_length", "Jobs waiting to run", value=counts.get("queued", 0))
        s = SummaryMetricFamily("hotmesh_stage_seconds", "Stage durations of finished jobs", labels=["stage"])
        per: dict[str, list[float]] = {}
        for j in jobs:
            for stage, t in j.timings.items():
                if not t.get("skipped"):
                    per.setdefault(stage, []).append(float(t.get("seconds") or 0))
        for stage, vals in sorted(per.items()):
            s.add_metric([stage], count_value=len(vals), sum_value=sum(vals))
        yield s
        st = self.status()
        yield GaugeMetricFamily("hotmesh_disk_ok", "1 when there is space for the next job", value=1 if st.get("disk_ok", True) else 0)
        yield GaugeMetricFamily("hotmesh_ledger_pending_writes", "State changes kept in memory until the ledger "
                                "can be written", value=st.get("pending_writes", 0))
        used = GaugeMetricFamily("hotmesh_gpu_memory_used_mib", "GPU memory in use", labels=["gpu"])
        total = GaugeMetricFamily("hotmesh_gpu_memory_total_mib", "GPU memory", labels=["gpu"])
        for idx, u, t in gpu_memory():
            used.add_metric([idx], u)
            total.add_metric([idx], t)
        yield used
        yield total


def serve_http(host: str, port: int, ledger_path: Path, status: Callable[[], dict[str, Any]]) -> http.server.ThreadingHTTPServer:
    """/health (JSON; 503 when the main loop is stuck) and /metrics (Prometheus) on a background thread."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(LedgerCollector(ledger_path, status))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path.startswith("/metrics"):
                body, ctype, code = generate_latest(registry), "text/plain; version=0.0.4", 200
            elif self.path.startswith("/health"):
                st = status()
                code = 200 if st.get("healthy") else 503
                body, ctype = json.dumps(st).encode(), "application/json"
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("http: " + fmt, *args)

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="hotmesh-http", daemon=True).start()
    return server


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the job id is lifted out of the '[job X]' prefix every job line carries."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        d: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name}
        if msg.startswith("[job ") and "] " in msg:
            d["job"] = msg[5:msg.index("]")]
            msg = msg[msg.index("] ") + 2:]
        d["msg"] = msg
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d)
