"""Settings: one validated dataclass per component, loaded from defaults < TOML file < HOTMESH_* env < CLI.

A TOML file uses one table per section::

    [intake]
    settle_seconds = 5
    [geometry]
    voxel_resolution = 192

Environment variables are ``HOTMESH_<SECTION>_<KEY>`` (``HOTMESH_GEOMETRY_VOXEL_RESOLUTION=192``);
``HOTMESH_INBOX`` / ``HOTMESH_OUTBOX`` / ``HOTMESH_STATE`` / ``HOTMESH_CONFIG`` set the folders.

The daemon's sections (intake, jobs, ops, executor) are defined here; the pipeline's sections are in
:mod:`pipeline.settings` and reach a job as ``Settings.pipeline``. Secrets live only in ``ops``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import Field
from pydantic.dataclasses import dataclass

from pipeline.settings import (FROZEN, SECTIONS as PIPELINE_SECTIONS, ConfigError, NonNeg, PipelineSettings, Pos,
                               PosInt, build_pipeline_settings, build_section)
from pipeline.io.redact import secret_values

__all__ = ["ConfigError", "Settings", "build_settings", "load_settings", "settings_from_json", "redacted"]


@dataclass(frozen=True, config=FROZEN)
class IntakeConfig:
    settle_seconds: NonNeg = 5.0  # a folder must be unchanged this long before it becomes a job
    rescan_seconds: Pos = 10.0  # periodic rescan: catches events lost on network/bind mounts
    # ... or this long while its transforms.json lists files that are not there yet (a copy with long pauses)
    missing_files_seconds: NonNeg = 60.0


@dataclass(frozen=True, config=FROZEN)
class JobsConfig:
    max_attempts: PosInt = 3  # a job interrupted (crash, kill -9, OOM) this often is failed
    cancel_poll_seconds: Pos = 1.0
    shutdown_grace_seconds: NonNeg = 60.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    worker_max_jobs: Annotated[int, Field(ge=0)] = 50  # a worker process is replaced after this many jobs


@dataclass(frozen=True, config=FROZEN)
class ExecutorConfig:
    """Where jobs run. ``local``: one child process per GPU of this host (``--gpus``). ``ray``: Ray tasks on a
    cluster, each asking for ``gpus_per_job`` GPUs; the ledger stays on the daemon's host."""

    kind: Literal["local", "ray"] = "local"
    ray_address: str = "auto"  # HOST:PORT of a running cluster, "auto" (RAY_ADDRESS / local head), or "local"
    gpus_per_job: NonNeg = 1.0  # 0: CPU-only tasks (cpus_per_job each)
    cpus_per_job: Pos = 1.0
    max_in_flight: Annotated[int, Field(ge=0)] = 0  # 0: as many as the cluster's GPUs (or CPUs) allow
    shared_paths: bool = True  # every node mounts inbox, outbox and state at the same paths
    max_transfer_mb: Pos = 2048.0  # without shared paths: largest input or result moved through the object store
    local_gpus: Annotated[int, Field(ge=0)] = 0  # ray_address = local: logical GPUs of the in-process cluster


@dataclass(frozen=True, config=FROZEN)
class OpsConfig:
    """Running unattended: retention, disk guard, limits, notifications, observability."""

    retention_interval_seconds: Pos = 3600.0  # how often the cleanup runs (apscheduler)
    state_retention_days: float = 7.0  # finished jobs' scratch/checkpoints are deleted after this; < 0: keep
    outbox_retention_days: float = -1.0  # published results older than this are deleted; < 0: keep
    inbox_after: Literal["keep", "move", "delete"] = "keep"  # processed inbox folders
    inbox_after_days: NonNeg = 0.0  # ... this long after the job ended
    min_free_mb: NonNeg = 500.0  # safety margin on top of each job's estimated need
    max_runtime_seconds: NonNeg = 0.0  # per job; 0: no limit
    webhook_urls: str = ""  # comma-separated; POSTed on done/failed/cancelled (secret: never written out)
    webhook_secret: str = ""  # Standard Webhooks signing key (whsec_<base64> or any string) (secret)
    webhook_retries: Annotated[int, Field(ge=0)] = 5
    webhook_backoff_seconds: NonNeg = 2.0  # doubles after each failed try
    command_hook: str = ""  # shell command run on done/failed/cancelled (summary JSON on stdin)
    http_port: Annotated[int, Field(ge=0, le=65535)] = 0  # health + Prometheus metrics; 0: off
    http_host: str = "127.0.0.1"
    json_logs: bool = False


@dataclass(frozen=True, config=FROZEN)
class PathsConfig:
    """The folders, for every subcommand (``daemon.folders.resolve_folders``): a flag or HOTMESH_INBOX / HOTMESH_OUTBOX /
    HOTMESH_STATE wins over these; empty: ./inbox, ./outbox and the state folder next to the outbox."""

    inbox: str = ""
    outbox: str = ""
    state: str = ""


DAEMON_SECTIONS: dict[str, type] = {"intake": IntakeConfig, "jobs": JobsConfig, "ops": OpsConfig,
                                    "executor": ExecutorConfig, "paths": PathsConfig}
SECRET_KEYS = {("ops", "webhook_secret"), ("ops", "webhook_urls"), ("ops", "command_hook")}


@dataclasses.dataclass(frozen=True)
class Settings:
    intake: IntakeConfig = dataclasses.field(default_factory=IntakeConfig)
    jobs: JobsConfig = dataclasses.field(default_factory=JobsConfig)
    ops: OpsConfig = dataclasses.field(default_factory=OpsConfig)
    executor: ExecutorConfig = dataclasses.field(default_factory=ExecutorConfig)
    paths: PathsConfig = dataclasses.field(default_factory=PathsConfig)
    pipeline: PipelineSettings = dataclasses.field(default_factory=PipelineSettings)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every section, flat (``{"ops": {...}, "geometry": {...}}``): the worker's copy. Holds secrets."""
        d = {name: dataclasses.asdict(getattr(self, name)) for name in DAEMON_SECTIONS}
        d.update(self.pipeline.to_dict())
        return d

    def secrets(self) -> tuple[str, ...]:
        """Every secret string in these settings and its secret parts (URL passwords, query values, token-like path
        parts; not ordinary words such as a URL path `/hook`), longest first: what
        log handlers and ledger events are scrubbed of (pipeline.io.redact)."""
        return secret_values(str(getattr(getattr(self, section), key)) for section, key in sorted(SECRET_KEYS))


def redacted(d: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """A flat settings dict with every secret replaced by a mark saying whether it is set (for display)."""
    out = {s: dict(v) for s, v in d.items()}
    for section, key in SECRET_KEYS:
        if section in out and key in out[section]:
            out[section][key] = "(set)" if out[section][key] else ""
    return out


def build_settings(overrides: Mapping[str, Mapping[str, Any]]) -> Settings:
    """Settings from ``{section: {key: value}}``; unknown sections or keys and invalid values raise
    :class:`ConfigError` (a ``ValueError``) naming the key and what it accepts."""
    known = set(DAEMON_SECTIONS) | set(PIPELINE_SECTIONS)
    unknown_sections = set(overrides) - known
    if unknown_sections:
        raise ConfigError(f"config: unknown section(s) {sorted(unknown_sections)}; known: {sorted(known)}")
    parts = {name: build_section(name, cls, overrides.get(name, {})) for name, cls in DAEMON_SECTIONS.items()}
    return Settings(**parts, pipeline=build_pipeline_settings(overrides))


# HOTMESH_* variables that are not settings: folders, GPUs, build and test knobs, and what the command hook is given
NON_SETTING_ENV = frozenset({"HOTMESH_INBOX", "HOTMESH_OUTBOX", "HOTMESH_STATE", "HOTMESH_CONFIG", "HOTMESH_GPUS",
                             "HOTMESH_UID", "HOTMESH_GID", "HOTMESH_DATA", "HOTMESH_NODE_MODULES", "HOTMESH_PROFILE",
                             "HOTMESH_PROFILE_STAGES", "HOTMESH_TEST_DATA", "HOTMESH_REQUIRE_TEST_DATA",
                             "HOTMESH_SHARED", "HOTMESH_COMMIT"})
NON_SETTING_PREFIXES = ("HOTMESH_JOB_",)  # set by the daemon for ops.command_hook


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``{section: {key: value}}`` from ``HOTMESH_<SECTION>_<KEY>`` variables. A HOTMESH_ variable that names no
    section (a misspelt ``HOTMESH_DENZE_RESOLUTION``) raises :class:`ConfigError` naming it: ignoring it would run
    with a setting the user believes is set. Unknown keys of a known section are named by build_section."""
    out: dict[str, dict[str, str]] = {}
    sections = sorted(list(DAEMON_SECTIONS) + list(PIPELINE_SECTIONS), key=len, reverse=True)
    unknown: list[str] = []
    for name, value in environ.items():
        if not name.startswith("HOTMESH_") or name in NON_SETTING_ENV or name.startswith(NON_SETTING_PREFIXES):
            continue
        rest = name[len("HOTMESH_"):].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            unknown.append(name)
            continue
        out.setdefault(section, {})[rest[len(section) + 1:]] = value
    if unknown:
        known = ", ".join(f"HOTMESH_{s.upper()}_<KEY>" for s in sorted(sections))
        raise ConfigError(f"unknown environment variable(s) {', '.join(sorted(unknown))}: a setting is "
                          f"HOTMESH_<SECTION>_<KEY> with a section of {known}; the others hotmesh reads are "
                          f"{', '.join(sorted(NON_SETTING_ENV))}")
    return out


def merge(*layers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            if not isinstance(values, Mapping):
                raise ConfigError(f"config: [{section}] must be a table, got {values!r}")
            merged.setdefault(section, {}).update(values)
    return merged


def load_settings(config_file: Path | None, environ: Mapping[str, str] | None = None,
                  cli: Mapping[str, Mapping[str, Any]] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    file_layer: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_layer = tomllib.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {config_file}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {config_file} is not valid TOML: {e}") from None
    return build_settings(merge(file_layer, env_overrides(environ), cli or {}))


def settings_from_json(blob: str) -> Settings:
    return build_settings(json.loads(blob))
