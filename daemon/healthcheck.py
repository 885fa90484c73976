"""Container health check: ``python -m daemon.healthcheck`` asks the running daemon's ``/health`` endpoint.

Exit 0 when it answers 200 (the main loop ticks), 1 otherwise, with one line saying why (Docker keeps it in
``docker inspect``). The port and host come from the same settings the daemon reads (``ops.http_port`` /
``ops.http_host`` from HOTMESH_CONFIG and HOTMESH_OPS_* variables), so changing the port in the config cannot
leave the check asking the wrong place. The Dockerfile's HEALTHCHECK runs exactly this command.
"""
from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def health_url(host: str, port: int) -> str:
    """Where to ask: a daemon listening on every interface is reached on the loopback address."""
    h = "127.0.0.1" if host in WILDCARD_HOSTS else host
    h = f"[{h}]" if ":" in h and not h.startswith("[") else h
    return f"http://{h}:{port}/health"


def check(timeout: float = 5.0) -> tuple[bool, str]:
    """(healthy, one-line reason)."""
    from daemon.config import load_settings

    config = os.environ.get("HOTMESH_CONFIG")
    try:
        ops = load_settings(Path(config) if config else None).ops
    except ValueError as e:
        return False, f"settings cannot be read: {e}"
    if not ops.http_port:
        return False, "ops.http_port is 0, so the daemon serves no /health; set HOTMESH_OPS_HTTP_PORT"
    url = health_url(ops.http_host, ops.http_port)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = json.loads(r.read() or b"{}")
            return True, f"healthy: {url} answered {r.status} (pid {body.get('pid')})"
    except urllib.error.HTTPError as e:  # 503: the main loop has not ticked for too long
        return False, f"unhealthy: {url} answered {e.code}: {e.read()[:300].decode(errors='replace')}"
    except (OSError, ValueError) as e:
        return False, f"unhealthy: {url} did not answer ({e})"


def main() -> int:
    ok, reason = check()
    print(reason, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
