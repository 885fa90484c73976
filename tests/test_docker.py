"""The container's entrypoint and health check, run exactly as the Dockerfile runs them, outside Docker; and the
compose files' structure (the Ray deployment must not start the single-host daemon too)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, wait_for

DOCKERFILE = (REPO / "Dockerfile").read_text()


def _json_instruction(name: str) -> list[str]:
    """The exec-form (JSON array) argument of a Dockerfile instruction, continuation lines joined."""
    text = DOCKERFILE.replace("\\\n", " ")
    m = re.search(rf"^{name}\b[^\[\n]*?(?:CMD\s+)?(\[.*\])\s*$", text, re.M)
    if m is None:
        raise AssertionError(f"no exec-form {name} in the Dockerfile")
    return json.loads(m.group(1))


def _image_env() -> dict[str, str]:
    text = DOCKERFILE.replace("\\\n", " ")
    env: dict[str, str] = {}
    for m in re.finditer(r"^ENV\s+(.*)$", text, re.M):
        env.update(dict(re.findall(r"(\w+)=(\S+)", m.group(1))))
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_command_against_a_real_daemon(daemon_factory) -> None:
    cmd = _json_instruction("HEALTHCHECK")
    assert cmd[0] == "python"  # the image's venv python; here the test's interpreter
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["hotmesh"]["healthcheck"]["test"]
    ray = yaml.safe_load((REPO / "docker-compose.ray.yml").read_text())["services"]["hotmesh-ray"]["healthcheck"]["test"]
    assert compose == ray == ["CMD", *cmd]  # one check everywhere the daemon runs
    image_env = _image_env()
    assert image_env.get("HOTMESH_OPS_HTTP_PORT"), "the image must switch the /health endpoint on"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTMESH_")} | {
        "PYTHONPATH": str(REPO), "HOTMESH_OPS_HTTP_PORT": str(port)}  # the image's variable, a free port here

    def run_check() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *cmd[1:]], cwd=tempfile.gettempdir(), env=env, capture_output=True,
                              text=True, timeout=30)

    r = run_check()  # no daemon yet
    assert r.returncode == 1 and "did not answer" in r.stderr
    d = daemon_factory("--set", f"ops.http_port={port}").start()

    def up() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        except OSError:
            return False

    wait_for(up, 60, "the daemon's /health")
    r = run_check()
    assert r.returncode == 0 and "healthy" in r.stdout, (r.stdout, r.stderr)
    d.stop()
    r = run_check()
    assert r.returncode == 1 and "did not answer" in r.stderr
    r = subprocess.run([sys.executable, *cmd[1:]], env=env | {"HOTMESH_OPS_HTTP_PORT": "0"}, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and "ops.http_port is 0" in r.stderr


def _entrypoint() -> list[str]:
    cmd = _json_instruction("ENTRYPOINT")
    assert cmd[:2] == ["/usr/bin/tini", "--"] and cmd[2] == "/opt/hotmesh/docker/entrypoint.sh"
    return [str(REPO / Path(cmd[2]).relative_to("/opt/hotmesh"))]


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to another uid to see a folder it cannot write")
def test_entrypoint_checks_the_folders_then_runs_the_command() -> None:
    script = _entrypoint()
    root = Path(tempfile.mkdtemp(prefix="hotmesh-entry-", dir="/tmp"))
    try:
        root.chmod(0o755)
        shutil.copy(script[0], root / "entrypoint.sh")
        inbox, outbox, state = root / "inbox", root / "outbox", root / "state"
        for d, mode in ((inbox, 0o755), (outbox, 0o777), (state, 0o755)):
            d.mkdir()
            d.chmod(mode)
        env = {"PATH": os.environ["PATH"], "HOTMESH_INBOX": str(inbox), "HOTMESH_OUTBOX": str(outbox),
               "HOTMESH_STATE": str(state)}
        run = ["sh", str(root / "entrypoint.sh"), "sh", "-c", "echo started as $(id -u)"]
        r = subprocess.run(run, env=env, capture_output=True, text=True, timeout=30)  # root: all usable
        assert r.returncode == 0 and r.stdout.strip() == "started as 0", r.stderr
        # another user, as in the image: the state folder belongs to root -> stop with the chown to run
        r = subprocess.run(run, env=env, capture_output=True, text=True, timeout=30, user=65534, group=65534)
        assert r.returncode == 78 and "started" not in r.stdout
        assert f"HOTMESH_STATE={state} (owner 0:0) is not writable by the container user 65534:65534" in r.stderr
        assert f"sudo chown -R 65534:65534 <the folder mounted at {state}>" in r.stderr
        assert "HOTMESH_OUTBOX" not in r.stderr  # writable: fine
        assert f"HOTMESH_INBOX={inbox} is read-only" in r.stderr  # a note only
        state.chmod(0o777)
        r = subprocess.run(run, env=env, capture_output=True, text=True, timeout=30, user=65534, group=65534)
        assert r.returncode == 0 and r.stdout.strip() == "started as 65534", r.stderr
        # a folder that does not exist yet is created (the named state volume starts empty)
        r = subprocess.run(run, env=env | {"HOTMESH_STATE": str(state / "new")}, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0 and (state / "new").is_dir()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_ray_compose_file_does_not_start_the_single_host_daemon() -> None:
    plain = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    ray_text = (REPO / "docker-compose.ray.yml").read_text()
    ray = yaml.safe_load(ray_text)["services"]
    assert list(plain) == ["hotmesh"]
    # `up` of the Ray file without --profile: head + Ray daemon; the worker only where it is asked for
    assert sorted(n for n, s in ray.items() if not s.get("profiles")) == ["hotmesh-ray", "ray-head"]
    assert ray["ray-worker"]["profiles"] == ["worker"]
    # a required ${VAR:?} anywhere would fail `up` on every host (Compose interpolates before profiles)
    for text in (ray_text, (REPO / "docker-compose.yml").read_text()):
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert ":?" not in code
    # containers without a hotmesh daemon must not inherit the image's /health check (always unhealthy)
    assert ray["ray-head"]["healthcheck"] == {"disable": True} and ray["ray-worker"]["healthcheck"] == {"disable": True}
    assert "build" in ray["ray-head"] and ray["hotmesh-ray"]["image"] == ray["ray-head"]["image"]


def test_a_configuration_error_stops_the_containers_and_the_dashboard_stays_local() -> None:
    """The entrypoint exits 78 for folders it cannot use: a restart policy that retries for ever hides that in a
    loop. The Ray dashboard (an unauthenticated job API) on host networking must not face the network by default."""
    for name in ("docker-compose.yml", "docker-compose.ray.yml"):
        services = yaml.safe_load((REPO / name).read_text())["services"]
        for service, spec in services.items():
            policy = str(spec.get("restart", "no"))
            assert policy == "no" or re.fullmatch(r"on-failure:\d+", policy), f"{name} {service}: restart {policy}"
    head = yaml.safe_load((REPO / "docker-compose.ray.yml").read_text())["services"]["ray-head"]["command"]
    dash = [a for a in head if a.startswith("--dashboard-host=")]
    assert dash, "ray start must name the dashboard host (Ray's default depends on its version)"
    # the compose default of ${RAY_DASHBOARD_HOST:-...}, as Compose would substitute it with the variable unset
    default = re.sub(r"\$\{RAY_DASHBOARD_HOST:-([^}]*)\}", r"\1", dash[0].split("=", 1)[1])
    assert default == "127.0.0.1"
