"""Settings: one dataclass per component, loaded from defaults < TOML file < HOTMESH_* env < CLI.

A TOML file uses one table per section::

    [intake]
    settle_seconds = 5
    [geometry]
    voxel_resolution = 192

Environment variables are ``HOTMESH_<SECTION>_<KEY>`` (``HOTMESH_GEOMETRY_VOXEL_RESOLUTION=192``);
``HOTMESH_INBOX`` / ``HOTMESH_OUTBOX`` / ``HOTMESH_STATE`` / ``HOTMESH_CONFIG`` set the folders.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class IntakeConfig:
    settle_seconds: float = 5.0  # a folder must be unchanged this long before it becomes a job
    rescan_seconds: float = 10.0  # periodic rescan: catches events lost on network/bind mounts


@dataclass(frozen=True)
class LimitsConfig:
    max_file_mb: float = 64.0
    max_job_mb: float = 4096.0
    max_images: int = 1000
    max_megapixels: float = 60.0
    min_images: int = 8


@dataclass(frozen=True)
class JobsConfig:
    max_attempts: int = 3  # a job interrupted (crash, kill -9, OOM) this often is failed
    cancel_poll_seconds: float = 1.0
    shutdown_grace_seconds: float = 60.0
    device: str = "auto"  # auto | cpu | cuda
    worker_max_jobs: int = 50  # a worker process is replaced after this many jobs (bounds allocator growth)


@dataclass(frozen=True)
class ExecutorConfig:
    """Where jobs run. ``local``: one child process per GPU of this host (``--gpus``). ``ray``: Ray tasks on a
    cluster, each asking for ``gpus_per_job`` GPUs; the ledger stays on the daemon's host."""

    kind: str = "local"  # local | ray
    ray_address: str = "auto"  # HOST:PORT of a running cluster, "auto" (RAY_ADDRESS / local head), or "local"
    gpus_per_job: float = 1.0  # 0: CPU-only tasks (cpus_per_job each)
    cpus_per_job: float = 1.0
    max_in_flight: int = 0  # 0: as many as the cluster's GPUs (or CPUs / cpus_per_job) allow, re-read as nodes join
    shared_paths: bool = True  # every node mounts inbox, outbox and state at the same paths
    max_transfer_mb: float = 2048.0  # without shared paths: largest input or result moved through the object store
    local_gpus: int = 0  # ray_address = local: logical GPUs the in-process cluster advertises (tests, laptops)


@dataclass(frozen=True)
class OpsConfig:
    """Running unattended: retention, disk guard, limits, notifications, observability."""

    retention_interval_seconds: float = 3600.0  # how often the cleanup runs (apscheduler)
    state_retention_days: float = 7.0  # finished jobs' scratch/checkpoints are deleted after this; < 0: keep
    outbox_retention_days: float = -1.0  # published results older than this are deleted; < 0: keep
    inbox_after: str = "keep"  # processed inbox folders: keep | move (to inbox/_done/) | delete
    inbox_after_days: float = 0.0  # ... this long after the job ended
    min_free_mb: float = 500.0  # safety margin on top of each job's estimated need
    max_runtime_seconds: float = 0.0  # per job; 0: no limit
    webhook_urls: str = ""  # comma-separated; POSTed on done/failed/cancelled
    webhook_secret: str = ""  # HMAC-SHA256 key for the X-Hotmesh-Signature header
    webhook_retries: int = 5
    webhook_backoff_seconds: float = 2.0  # doubles after each failed try
    command_hook: str = ""  # shell command run on done/failed/cancelled (summary JSON on stdin)
    http_port: int = 0  # health + Prometheus metrics on http_host:http_port; 0: off
    http_host: str = "127.0.0.1"
    json_logs: bool = False


@dataclass(frozen=True)
class ImagesConfig:
    max_side: int = 1024  # working resolution: images are downscaled to this longest side
    holdout_every: int = 10  # every Nth view is held out from fitting, for the report's quality numbers


@dataclass(frozen=True)
class SfmConfig:
    """Camera poses for photos without transforms.json / COLMAP model (pycolmap)."""

    matcher: str = "auto"  # auto (exhaustive up to 30 images, else sequential) | exhaustive | sequential
    max_image_size: int = 1000  # long side features are extracted at
    camera_model: str = "OPENCV"  # one shared camera with radial-tangential distortion
    guided_matching: bool = True  # measured: apple registers 20/20 with it, 13/20 without
    min_registered: float = 0.7  # fraction of the images that must register, else the job fails
    device: str = "auto"  # auto | cpu | cuda (needs pycolmap-cuda12)
    num_threads: int = -1


@dataclass(frozen=True)
class MasksConfig:
    """Automatic foreground masks for views without alpha or masks/ file (GrabCut seeded by SfM points)."""

    auto: str = "missing"  # missing: views without a mask get one | off: such views are not used for the shape
    work_size: int = 480  # long side GrabCut runs at
    iterations: int = 5


@dataclass(frozen=True)
class GeometryConfig:
    voxel_resolution: int = 192  # cells along the longest side of the object's box
    outlier_views: int = -1  # views allowed to disagree with a voxel; -1: 0 for given masks, 3% (<= 2) for automatic ones
    smoothing_iterations: int = 10  # Taubin smoothing after marching cubes
    max_faces: int = 200_000


@dataclass(frozen=True)
class RefineConfig:
    enabled: str = "auto"  # auto: on a GPU only (the CPU preview is coarser than the hull it starts from)
    levels: int = 2  # coarse-to-fine levels; the mesh is subdivided and the image size doubled per level
    image_size: int = 512  # long image side at the finest level
    iterations: int = 250  # per level
    start_faces: int = 30_000
    max_faces: int = 250_000
    smoothness: float = 19.0  # largesteps lambda
    step: float = 3e-2  # shape learning rate in normalised units (object in the unit sphere)
    # measured against 1.0 on four sets (bench/results/tune-D-h200.json): F@0.2% +0.0002 to +0.0057, same time
    photometric_weight: float = 2.0
    silhouette_weight: float = 1.0
    # pytorch3d mesh regularisers, weights relative to the image losses (0 disables one)
    normal_weight: float = 0.0
    laplacian_weight: float = 0.0
    edge_weight: float = 0.0
    smoothness_decay: float = 1.0  # largesteps lambda is multiplied by this at each finer level
    alpha_coverage: bool = True  # fit silhouettes to the alpha matte's sub-pixel coverage where masks came from it
    remesh: str = "isotropic"  # mesh growth per level: isotropic (pymeshlab, uniform triangles) | subdivide (midpoint)
    lr_final: float = 1.0  # the last level's shape step decays (cosine) to this fraction of step
    # CPU preview (pytorch3d rasteriser): much smaller, used when enabled = "on" and there is no GPU
    cpu_image_size: int = 128
    cpu_iterations: int = 40
    cpu_faces: int = 6_000


@dataclass(frozen=True)
class TextureConfig:
    """UV-textured outputs (xatlas atlas, photos baked in, then least-squares fitted to the photo pixels)."""

    enabled: bool = True  # false: vertex colours only
    size: int = 2048  # texture side, texels (GPU)
    cpu_size: int = 1024  # on the CPU: baking 2048^2 texels from 45 photos took 414 s (fox), 1024^2 a quarter
    # the textured mesh is a copy of the final mesh decimated to this; 120000 keeps the refined mesh (~112k faces)
    # whole: held-out PSNR 29.7 vs 28.7 dB (spot), 29.7 vs 29.1 (bob) over 60000, GLB ~2x (H100, textured-120k-h100)
    max_faces: int = 120_000
    cpu_max_faces: int = 60_000  # on the CPU (1024^2 texture): 120000 cost +8 s of atlas on 2 cores for the same PSNR
    view_weight_power: float = 4.0  # bake weight of a photo: cos(normal, view direction)^this
    atlas_pieces: int = 0  # patches xatlas charts in parallel; 0: one per 4000 faces, at most 16 (5x faster)
    # least-squares fit of the bake to the photo pixels (pipeline.texture.fit_texture): the texture that best
    # reproduces the training photos under the renderer's own bilinear model
    fit: bool = True
    fit_iterations: int = 60  # conjugate-gradient steps
    fit_prior: float = 0.1  # pull towards the baked colour, per texel, in units of one pixel's squared error
    fit_smooth: float = 1.0  # pull between neighbouring texels' corrections
    fit_view_power: float = 0.0  # pixel weight |cos(normal, view)|^this
    # on the CPU the pixels come from ray casting in this many views; 0 (default): no fit on the CPU. Measured with 12
    # (pipeline-cpu-fit12.json, 2 cores): +0.06 / +0.08 dB for 2.6 / 5.9 s on sample / spot_render, but -0.09 dB and
    # +29 s on lego, whose hull is far from its surface
    cpu_fit_views: int = 0


@dataclass(frozen=True)
class ReportConfig:
    render_size: int = 384
    gt_samples: int = 200_000
    fscore_tau: float = 0.01  # F-score threshold, fraction of the GT bounding-box diagonal
    # summary grade (pass / warn / fail) from the held-out views
    grade_iou_pass: float = 0.9
    grade_iou_warn: float = 0.75
    grade_psnr_pass: float = 25.0
    grade_psnr_warn: float = 20.0


@dataclass(frozen=True)
class Settings:
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    sfm: SfmConfig = field(default_factory=SfmConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    texture: TextureConfig = field(default_factory=TextureConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def section_hash(self, sections: tuple[str, ...]) -> str:
        """Stable hash of the named sections: a stage's checkpoint is valid only for this hash."""
        d = self.to_dict()
        blob = json.dumps({s: d[s] for s in sorted(sections)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_SECTION_TYPES = {
    "intake": IntakeConfig, "limits": LimitsConfig, "jobs": JobsConfig, "ops": OpsConfig,
    "executor": ExecutorConfig,
    "images": ImagesConfig, "sfm": SfmConfig, "masks": MasksConfig, "geometry": GeometryConfig, "refine": RefineConfig, "texture": TextureConfig, "report": ReportConfig,
}


def _coerce(value: Any, target: Any, where: str) -> Any:
    kind = type(target)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"config {where}: expected {kind.__name__}, got {value!r}") from None


def build_settings(overrides: Mapping[str, Mapping[str, Any]]) -> Settings:
    """Settings from ``{section: {key: value}}``; unknown sections or keys raise ``ValueError``."""
    parts: dict[str, Any] = {}
    for section, cls in _SECTION_TYPES.items():
        default = cls()
        values = dict(overrides.get(section, {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"config [{section}]: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        coerced = {k: _coerce(v, getattr(default, k), f"{section}.{k}") for k, v in values.items()}
        parts[section] = dataclasses.replace(default, **coerced)
    unknown_sections = set(overrides) - set(_SECTION_TYPES)
    if unknown_sections:
        raise ValueError(f"config: unknown section(s) {sorted(unknown_sections)}; known: {sorted(_SECTION_TYPES)}")
    return Settings(**parts)


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith("HOTMESH_"):
            continue
        rest = name[len("HOTMESH_"):].lower()
        for section in _SECTION_TYPES:
            if rest.startswith(section + "_"):
                out.setdefault(section, {})[rest[len(section) + 1:]] = value
    return out


def merge(*layers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            if not isinstance(values, Mapping):
                raise ValueError(f"config: [{section}] must be a table, got {values!r}")
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
            raise ValueError(f"config file not found: {config_file}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {config_file} is not valid TOML: {e}") from None
    return build_settings(merge(file_layer, env_overrides(environ), cli or {}))


def settings_from_json(blob: str) -> Settings:
    return build_settings(json.loads(blob))
