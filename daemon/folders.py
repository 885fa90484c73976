"""One way for every subcommand to find the inbox, the outbox and the state folder (with its ledger), and to say
where each came from."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from pipeline.stage_names import CHECKPOINTED_STAGES

STATE_BESIDE_OUTBOX = "hotmesh-state"  # `run`'s default: the state folder next to the outbox
FOLDER_ENV = {"inbox": "HOTMESH_INBOX", "outbox": "HOTMESH_OUTBOX", "state": "HOTMESH_STATE"}
# the stages `retry --from-stage` accepts, in order (publishing has no checkpoint: a plain retry publishes again)
STAGES_TEXT = ", ".join(CHECKPOINTED_STAGES)


@dataclass(frozen=True)
class Folders:
    """Resolved folders and, for each, where its value came from (shown to the user)."""

    inbox: Path
    outbox: Path
    state: Path
    origin: dict[str, str]  # "inbox" | "outbox" | "state" -> "--state", "HOTMESH_STATE", "config paths.state", ...

    @property
    def ledger(self) -> Path:
        return self.state / "ledger.db"

    def describe(self, *names: str) -> str:
        return "; ".join(f"{n} {getattr(self, n)} ({self.origin[n]})" for n in names or ("inbox", "outbox", "state"))


def resolve_folders(flags: Mapping[str, str | None], environ: Mapping[str, str], config: Mapping[str, str],
                    cwd: Path, saved: Callable[[Path], Mapping[str, str]] = lambda state: {}) -> Folders:
    """inbox, outbox and state, each from: its flag > HOTMESH_INBOX / HOTMESH_OUTBOX / HOTMESH_STATE > the config's
    [paths] > (inbox, outbox: what the daemon using that state folder recorded in its paths.json) > the defaults
    ``run`` uses: ./inbox, ./outbox, and the state folder next to the outbox (<outbox>/../hotmesh-state).

    flags / config: {"inbox"|"outbox"|"state": value or None/""}; saved(state) reads that state's paths.json."""
    found: dict[str, Path] = {}
    origin: dict[str, str] = {}

    def given(name: str) -> bool:
        for value, where in ((flags.get(name), f"--{name}"), (environ.get(FOLDER_ENV[name]), FOLDER_ENV[name]),
                             (config.get(name), f"config paths.{name}")):
            if value:
                found[name] = (cwd / Path(value).expanduser()).resolve()
                origin[name] = where
                return True
        return False

    state_given = given("state")
    recorded = saved(found["state"]) if state_given else {}
    for name in ("inbox", "outbox"):
        if given(name):
            continue
        if recorded.get(name):
            found[name], origin[name] = Path(recorded[name]), f"recorded by the daemon in {found['state']}/paths.json"
        else:
            found[name], origin[name] = (cwd / name).resolve(), f"default ./{name}"
    if not state_given:
        found["state"] = found["outbox"].parent / STATE_BESIDE_OUTBOX
        origin["state"] = f"default: next to the outbox ({origin['outbox']})"
    return Folders(inbox=found["inbox"], outbox=found["outbox"], state=found["state"], origin=origin)


def saved_paths(state: Path) -> dict[str, str]:
    try:
        d = json.loads((state / "paths.json").read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def no_ledger_message(folders: Folders) -> str:
    return (f"no jobs: there is no ledger at {folders.ledger} (state folder: {folders.origin['state']}). Start the "
            f"daemon with `hotmesh run`, or point to its state folder with --state, HOTMESH_STATE or [paths] state "
            f"in the config")
