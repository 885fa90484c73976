"""Keeping secrets out of everything hotmesh writes: reports, stats.json, logs, the ledger, the state folder.

Both sides use it: the daemon holds the secrets (``ops.webhook_secret``, webhook URLs that may carry credentials or
tokens, the command hook) and scrubs its logs and ledger events with them; the pipeline never receives them but
redacts by key name anything settings-like it writes, as a second line of defence.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl, urlsplit

MASK = "***"
# key names that hold secrets wherever they appear (settings tables, JSON written out)
SECRET_NAME = re.compile(r"secret|token|passw|pwd|credential|api[_-]?key|auth|webhook|hook|signature", re.I)
MIN_SECRET_LEN = 4  # shorter values would scrub ordinary text ("1", "on") everywhere


def redact_url(url: str) -> str:
    """A URL for logs and events: scheme, host and port only; user, password, path and query (where webhooks keep
    tokens, e.g. /services/T0/B0/XXXX or ?token=) become '…'. Not a URL: the mask."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    netloc = (f"{MASK}@" if parts.username or parts.password else "") + host + (f":{port}" if port else "")
    return f"{parts.scheme}://{netloc}/…" if (parts.path not in ("", "/") or parts.query) else f"{parts.scheme}://{netloc}"


def token_like(word: str) -> bool:
    """A word that looks like a credential rather than an ordinary name: 8+ characters with letters and digits
    (``tok9abcdef``, ``CANARY-pw-77b2``), or 16+ of anything (a webhook's random path part). ``hook``, ``services``
    or ``webhooks`` are not, so a path that contains them is not masked."""
    return (len(word) >= 8 and bool(re.search(r"[A-Za-z]", word)) and bool(re.search(r"\d", word))) or len(word) >= 16


def secret_values(values: Iterable[str]) -> tuple[str, ...]:
    """Every string to scrub for the secret ``values``: each value whole, and for URLs the secret parts that may be
    logged apart from the URL (e.g. in an exception): the password and user:password, every query value, and the
    path when it holds a token-like part (and that part). Not the bare path of a URL such as ``/hook``, nor a user
    name: those are ordinary words, and scrubbing every occurrence garbled paths ("inbox***job"). Longest first,
    so a longer secret is replaced before a part of it."""
    out: set[str] = set()
    for v in values:
        v = (v or "").strip()
        if not v:
            continue
        out.add(v)
        # token-like words of a command or URL list: a hook's own output or an error may repeat one without the rest
        out.update(w for w in re.split(r"[\s'\"=:,;&?/@]+", v) if token_like(w))
        for part in v.split(",") if "://" in v else ():
            part = part.strip()
            out.add(part)
            try:
                p = urlsplit(part)
            except ValueError:
                continue
            if p.password:
                out.update({p.password, f"{p.username}:{p.password}"})
            if any(token_like(seg) for seg in p.path.split("/")):
                out.add(p.path)
            out.update(val for _k, val in parse_qsl(p.query, keep_blank_values=False))
            if p.query:
                out.add(p.query)
    return tuple(sorted((s for s in out if len(s) >= MIN_SECRET_LEN), key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by the mask (``secrets`` longest first)."""
    for s in secrets:
        if s and s in text:
            text = text.replace(s, MASK)
    return text


def redact_mapping(d: Any, secrets: Iterable[str] = ()) -> Any:
    """A JSON-like value with every entry under a secret-sounding key replaced by '(set)' or '' (whether it was
    set) and every string scrubbed of ``secrets``. Used on anything settings-like that is written out."""
    secrets = tuple(secrets)
    if isinstance(d, Mapping):
        return {k: (("(set)" if v else "") if isinstance(k, str) and SECRET_NAME.search(k) and not isinstance(v, (
            Mapping, list, bool)) else redact_mapping(v, secrets)) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [redact_mapping(v, secrets) for v in d]
    if isinstance(d, str):
        return scrub(d, secrets)
    return d


class ScrubFilter(logging.Filter):
    """A handler filter that removes secrets from each record's message and traceback before it is written."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        msg = record.getMessage()
        clean = scrub(msg, self.secrets)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
        return True


def install_scrubber(handlers: Iterable[logging.Handler], secrets: Iterable[str]) -> None:
    """Put one :class:`ScrubFilter` on each handler (replacing an earlier one): what reaches a log file or stderr
    through them is scrubbed, whichever logger it came from."""
    secrets = tuple(secrets)
    for h in handlers:
        for f in [f for f in h.filters if isinstance(f, ScrubFilter)]:
            h.removeFilter(f)
        h.addFilter(ScrubFilter(secrets))
