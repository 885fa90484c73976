"""Secrets never reach anything hotmesh writes: a canary planted in every secret setting of a real daemon, a real
job done and a real job failed, then every file under the outbox, the state folder (ledger included) and the
logs is searched for it."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from pathlib import Path

import pytest

from daemon import ops
from pipeline.io.redact import ScrubFilter, redact_mapping, redact_url, scrub, secret_values
from tests.conftest import TINY_SETTINGS, WebhookReceiver, drop, set_args, tiny_job, wait_for

CANARIES = {
    "secret": "CANARY-whsec-4f1d9a",
    "user": "CANARY-user-0b7e",
    "password": "CANARY-pw-77b2",
    "token": "CANARY-tok-91ce",
    "path": "CANARY-path-3a0f",
    "token2": "CANARY-tok2-e5d8",
    "hook": "CANARY-hook-c3d1",
}


def test_redaction_helpers() -> None:
    assert redact_url("https://u:p@hooks.example.com:8443/services/T0/B0/XYZ?token=abc") == \
        "https://***@hooks.example.com:8443/…"
    assert redact_url("https://example.com") == "https://example.com" and redact_url("not a url") == "***"
    parts = secret_values(["http://someone:pass1234@h.example/x/tok9abcdef?key=val12345,https://b.example/"])
    assert {"pass1234", "someone:pass1234", "/x/tok9abcdef", "tok9abcdef", "val12345"} <= set(parts)
    assert "" not in parts and all(len(p) >= 4 for p in parts)
    assert scrub("call https://h/?key=val12345 failed", parts) == "call https://h/?*** failed"
    assert redact_mapping({"ops": {"webhook_secret": "x", "webhook_urls": "", "retries": 3},
                           "report": {"note": "has val12345"}}, parts) == \
        {"ops": {"webhook_secret": "(set)", "webhook_urls": "", "retries": 3}, "report": {"note": "has ***"}}
    # a log record, its arguments and its traceback are scrubbed before any handler writes them
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    h = Keep()
    h.addFilter(ScrubFilter(parts))
    log = logging.getLogger("hotmesh.test.scrub")
    log.addHandler(h)
    try:
        try:
            raise OSError("connect to val12345 refused")
        except OSError:
            log.exception("posting to %s", "tok9abcdef")
    finally:
        log.removeHandler(h)
    assert records and "val12345" not in records[0] and "tok9abcdef" not in records[0] and "***" in records[0]


def test_canary_secrets_are_never_written(daemon_factory, tmp_path: Path, webhooks: WebhookReceiver,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    c = CANARIES
    urls = (f"http://{c['user']}:{c['password']}@127.0.0.1:{webhooks.port}/ok?token={c['token']}," 
            f"http://127.0.0.1:{webhooks.port}/fail/{c['path']}?access_token={c['token2']}")
    # through the environment, so the canaries are in no file of the test's own making
    monkeypatch.setenv("HOTMESH_OPS_WEBHOOK_SECRET", c["secret"])
    monkeypatch.setenv("HOTMESH_OPS_WEBHOOK_URLS", urls)
    monkeypatch.setenv("HOTMESH_OPS_WEBHOOK_RETRIES", "1")
    monkeypatch.setenv("HOTMESH_OPS_WEBHOOK_BACKOFF_SECONDS", "0")
    monkeypatch.setenv("HOTMESH_OPS_COMMAND_HOOK", f"echo failing with {c['hook']} >&2; exit 3")
    d = daemon_factory(*set_args(*TINY_SETTINGS)).start()
    src = tmp_path / "src"
    tiny_job(src / "good", views=8, size=48)
    bad = tiny_job(src / "bad", views=8, size=48)
    (bad / "transforms.json").unlink()  # unposed tiny renders: structure from motion fails
    drop(src / "good", d.inbox)
    drop(src / "bad", d.inbox)
    assert d.wait_state("good", timeout=180)["state"] == "done"
    assert d.wait_state("bad", timeout=180)["state"] == "failed"

    def notified() -> bool:  # per job: webhook 1 delivered, webhook 2 and the hook failed
        for job in ("good", "bad"):
            kinds = [e["kind"] for e in d.events(job)]
            if kinds.count("notified") < 1 or kinds.count("notify-failed") < 2:
                return False
        return True

    wait_for(notified, 60, "webhook and hook outcomes in the ledger")
    assert d.stop() == 0
    # the secrets were really in use: delivered with the signature and the URL's credentials
    ok = [(p, h, b) for p, h, b in webhooks.received if p.startswith("/ok")]
    assert len(ok) == 2 and all(p == f"/ok?token={c['token']}" for p, _h, _b in ok)
    for _p, h, body in ok:
        assert ops.verify_webhook(c["secret"], h, body)
        assert h["Authorization"] == "Basic " + base64.b64encode(f"{c['user']}:{c['password']}".encode()).decode()
    assert len([p for p, _h, _b in webhooks.received if p.startswith("/fail")]) == 4  # 2 jobs x (1 + 1 retry)
    # ... and were written nowhere: every file of the daemon's folders and logs, the ledger database included
    searched = 0
    for root in (d.outbox, d.state, d.inbox, *d.root.glob("daemon-*.log")):
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                searched += 1
                for name, canary in c.items():
                    assert canary.encode() not in data, f"{name} canary written to {path}"
    assert searched > 20
    # what is written instead names the webhook without its secrets
    events = d.events("good")
    msgs = " ".join(e["message"] for e in events)
    assert f"webhook #1 (http://***@127.0.0.1:{webhooks.port}/…) answered 200" in msgs
    assert f"webhook #2 (http://127.0.0.1:{webhooks.port}/…) failed 2 times" in msgs
    hook = [e for e in events if "command hook exited 3" in e["message"]]
    assert hook and "failing with ***" in json.dumps(hook[0]["data"])
    assert "webhook #2" in d.log()  # the daemon log names it too, scrubbed
    for name in ("good", "bad"):
        stats = json.loads((d.outbox / name / "stats.json").read_text())
        assert "ops" not in stats["config"] and "webhook" not in json.dumps(stats)
