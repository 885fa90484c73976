"""Shared fixtures: the real data sets, and a real daemon started as a subprocess on temp folders."""
from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HOTMESH_TEST_DATA", REPO.parent / "shared" / "data")).resolve()
SAMPLE = REPO / "samples" / "spot"


# The third-party sets some tests read (never copied into the repository: several are non-commercial or need
# attribution). Each entry says what the set is and where it comes from, for the skip reason and the README.
THIRD_PARTY: dict[str, str] = {
    "lego": "NeRF-synthetic 'lego' train split (Mildenhall et al.; scene CC-BY 3.0)",
    "fox": "instant-ngp 'fox' photos and transforms.json (github.com/NVlabs/instant-ngp, NVIDIA licence, NC)",
    "apple": "20 unposed photos of an apple (VGGSfM examples, CC BY-NC 4.0)",
    "cake": "8 small unposed photos of a cake (VGGSfM examples, CC BY-NC 4.0)",
    "spot_render": "60 rendered 512x512 views of Keenan Crane's Spot with gt.ply (made by ../shared/tools/render_set.py)",
    "spot_scene": "48 rendered phone-like photos of Spot on a table (made by ../shared/tools/render_scene.py)",
    "meshes": "ground-truth meshes (Spot, Bob, DamagedHelmet, ...) for rendering evaluation sets",
    "tools": "the renderers render_set.py and render_scene.py that bench/make_sets.py drives, in the tools/ "
             "folder beside the data folder",
}
# CI has the data folder: there a missing set is a broken setup, not a reason to skip (.ci/run sets this)
REQUIRE_DATA = os.environ.get("HOTMESH_REQUIRE_TEST_DATA", "") not in ("", "0")


def data(name: str) -> Path:
    """A third-party test set under the data folder. Missing: the test is skipped, saying what it needs and where
    that comes from, or fails when HOTMESH_REQUIRE_TEST_DATA is set (CI, where a skip would hide a lost folder)."""
    return _present(DATA / name, name)


def shared_tools() -> Path:
    """The shared renderers: tools/ beside the data folder (../shared/tools)."""
    return _present(DATA.parent / "tools", "tools")


def _present(p: Path, name: str) -> Path:
    p = p.resolve()
    if p.exists():
        return p
    what = THIRD_PARTY.get(name, "a third-party test set")
    reason = (f"needs test data {name!r} ({what}) at {p}: the data folder is ../shared/data beside the checkout or "
              f"$HOTMESH_TEST_DATA, and is not part of the repository (see the README's Tests section)")
    if REQUIRE_DATA:
        pytest.fail(f"{reason}; HOTMESH_REQUIRE_TEST_DATA is set, so missing data is an error", pytrace=False)
    pytest.skip(reason)


def gpu_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def drop(src: Path, inbox: Path, name: str | None = None, ignore: Callable | None = None) -> Path:
    """Copy ``src`` next to the inbox, then move it in with one rename, as a careful user does."""
    name = name or src.name
    staging = inbox.parent / "staging" / name
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(src, staging, ignore=ignore, symlinks=True)
    dst = inbox / name
    staging.rename(dst)
    return dst


def tiny_job(dst: Path, views: int = 10, size: int = 64) -> Path:
    """A small but real posed, masked job: the first ``views`` views of the bundled sample at ``size``^2."""
    meta = json.loads((SAMPLE / "transforms.json").read_text())
    (dst / "images").mkdir(parents=True)
    frames = meta["frames"][:: max(1, len(meta["frames"]) // views)][:views]
    for fr in frames:
        im = Image.open(SAMPLE / fr["file_path"]).resize((size, size), Image.Resampling.LANCZOS)
        im.save(dst / fr["file_path"])
    (dst / "transforms.json").write_text(json.dumps({"camera_angle_x": meta["camera_angle_x"], "frames": frames}))
    return dst


TINY_SETTINGS = ["limits.min_images=4", "geometry.voxel_resolution=32", "report.render_size=64",
                 "report.gt_samples=5000", "images.holdout_every=0"]


@dataclass
class DaemonProc:
    root: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def start(self) -> "DaemonProc":
        for d in (self.inbox, self.outbox, self.state):
            d.mkdir(parents=True, exist_ok=True)
        n = len(list(self.root.glob("daemon-*.log")))
        self.log_path = self.root / f"daemon-{n}.log"
        cmd = [sys.executable, "-m", "daemon.cli", "run", "--inbox", str(self.inbox), "--outbox", str(self.outbox),
               "--state", str(self.state), "--settle-seconds", "0.5", "--gpus", "cpu",
               "--set", "intake.rescan_seconds=1", "--set", "jobs.cancel_poll_seconds=0.2",
               # a folder whose transforms.json lists missing files (fox) waits this long, not the default minute
               "--set", "intake.missing_files_seconds=3",
               # smaller texture atlases keep the suite's CPU time down; tests/test_texture.py checks textures
               "--set", "texture.cpu_size=512", "--set", "texture.cpu_max_faces=20000", *self.args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, cwd=str(REPO), stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, env=env)
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def jobs(self) -> dict[str, dict[str, Any]]:
        from daemon.ledger import Ledger

        if not (self.state / "ledger.db").exists():
            return {}
        ledger = Ledger(self.state / "ledger.db")
        try:
            return {j.id: j.to_dict() for j in ledger.jobs()}
        finally:
            ledger.close()

    def events(self, job_id: str) -> list[dict[str, Any]]:
        from daemon.ledger import Ledger

        ledger = Ledger(self.state / "ledger.db")
        try:
            return ledger.events(job_id)
        finally:
            ledger.close()

    def wait_state(self, job_id: str, states: tuple[str, ...] = ("done", "failed", "cancelled"),
                   timeout: float = 300) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            if not self.alive():
                raise AssertionError(f"daemon died:\n{self.log()[-3000:]}")
            job = self.jobs().get(job_id)
            return job if job and job["state"] in states else None

        return wait_for(check, timeout, f"job {job_id} to reach {states}")


@pytest.fixture
def daemon_factory(tmp_path: Path):
    started: list[DaemonProc] = []

    def make(*args: str, root: Path | None = None) -> DaemonProc:
        d = DaemonProc(root or tmp_path, list(args))
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop(signal.SIGKILL if d.alive() else signal.SIGTERM, timeout=10)


def set_args(*settings: str) -> list[str]:
    out: list[str] = []
    for s in settings:
        out += ["--set", s]
    return out


def load_rgba(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"))


class _WebhookHandler(http.server.BaseHTTPRequestHandler):
    receiver: "WebhookReceiver"

    def do_POST(self) -> None:  # noqa: N802
        r = self.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        r.received.append((self.path, dict(self.headers), body))
        failing = self.path.startswith("/fail") or len(r.received) <= r.fail_first
        self.send_response(500 if failing else 200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class WebhookReceiver:
    """A local webhook endpoint: records (path, headers, body) of every POST; answers 500 to paths under /fail and
    to the first ``fail_first`` calls, 200 otherwise."""

    port: int = 0
    fail_first: int = 0
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def webhooks():
    receiver = WebhookReceiver()
    handler = type("Handler", (_WebhookHandler,), {"receiver": receiver})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    receiver.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield receiver
    server.shutdown()


@pytest.fixture(scope="session")
def unposed_wall(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    """The wall capture of ``tests.scenes`` without its poses through the CPU pipeline once: (outbox folder, stats,
    scene folder with the true cameras and ``gt.ply``). Shared by the tests that read what an unposed job
    publishes (one CPU dense job with SfM costs 20 s on CI's two cores)."""
    from tests.scenes import SceneSpec, render_scene
    from tests.test_captures import SMALL, _run

    root = tmp_path_factory.mktemp("unposed")
    scene = render_scene(root / "scene" / "wall", SceneSpec())
    shutil.copytree(scene / "images", root / "inbox" / "unposed" / "images")
    _, out, stats = _run(root / "inbox", "unposed", root, SMALL)
    return out, stats, scene
