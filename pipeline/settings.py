"""The pipeline's settings: one frozen, validated dataclass per component (pydantic dataclasses).

Each section is a TOML table of the same name (``[geometry]``, ``[refine]`` …). Values are checked when the
settings are built: a wrong type, a number out of range or a value that is not one of the allowed choices raises
:class:`ConfigError` naming the key and what is allowed. The daemon's own sections (intake, jobs, ops, executor)
live in ``daemon.config``; the pipeline never sees them, so secrets such as webhook keys cannot reach a report.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Annotated, Any, Literal, Mapping

from pydantic import ConfigDict, Field, ValidationError, model_validator
from pydantic.dataclasses import dataclass

FROZEN = ConfigDict(extra="forbid")

Pos = Annotated[float, Field(gt=0)]
NonNeg = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
PosInt = Annotated[int, Field(ge=1)]


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, or out of range; the message names it and what is allowed."""


@dataclass(frozen=True, config=FROZEN)
class LimitsConfig:
    max_file_mb: Pos = 64.0
    max_job_mb: Pos = 4096.0
    max_images: PosInt = 1000
    max_megapixels: Pos = 60.0
    min_images: Annotated[int, Field(ge=3)] = 8


@dataclass(frozen=True, config=FROZEN)
class ImagesConfig:
    max_side: Annotated[int, Field(ge=16, le=8192)] = 1024  # working resolution: longest side after downscaling
    holdout_every: Annotated[int, Field(ge=0)] = 10  # every Nth view is held out for the report's numbers; 0: none
    # frames sampled from each video of a folder without poses (the sharpest of as many equal parts of the clip)
    video_frames: Annotated[int, Field(ge=3, le=1000)] = 40


@dataclass(frozen=True, config=FROZEN)
class SfmConfig:
    """Camera poses for photos without transforms.json / COLMAP model (pycolmap)."""

    matcher: Literal["auto", "exhaustive", "sequential"] = "auto"  # auto: exhaustive up to 30 images
    max_image_size: Annotated[int, Field(ge=64, le=8192)] = 1000  # long side features are extracted at
    max_features: Annotated[int, Field(ge=256, le=65536)] = 8192  # SIFT features kept per photo
    camera_model: Literal["OPENCV", "SIMPLE_RADIAL", "PINHOLE", "SIMPLE_PINHOLE", "RADIAL"] = "OPENCV"
    guided_matching: bool = True  # measured: apple registers 20/20 with it, 13/20 without
    # sequential matching: each photo with the photos 2^k on, k < overlap (COLMAP's quadratic overlap)
    overlap: Annotated[int, Field(ge=1, le=100)] = 10
    min_registered: Fraction = 0.7  # fraction of the images that must register, else the job fails
    device: Literal["auto", "cpu", "cuda"] = "auto"  # cuda needs pycolmap-cuda12
    num_threads: int = -1
    # incremental: COLMAP's incremental mapper; global: GLOMAP's global rotation and position averaging, then one
    # bundle adjustment (measured in docs/benchmarks.md, SfM mappers)
    mapper: Literal["incremental", "global"] = "incremental"
    # incremental mapper's bundle adjustment: a global one each time the model grows by this factor, with at most
    # these iterations, and one refinement round per local / two per global adjustment (COLMAP: 1.1, -1, 2, 5);
    # global adjustments leave out points that add no coverage (COLMAP: off). Measured on the CPU
    # (docs/benchmarks.md, SfM mappers): ratio 1.4 mapped 200 photos 2.1x faster than COLMAP's settings, and 2.0
    # without redundant points 18 % faster again (fox: 25 %), every photo registered, cameras as accurate
    ba_global_ratio: Annotated[float, Field(ge=1.01, le=10.0)] = 2.0
    ba_global_iterations: PosInt = 25
    ba_refinements: PosInt = 1
    ba_skip_redundant_points: bool = True
    # local adjustments (after each registration): the new photo and its 3 most connected ones (COLMAP: 6), at most
    # 10 iterations (COLMAP: the solver's 50). Measured on the CPU: mapping 25-30 % faster on four sets, cameras as
    # accurate; the registrations, not the global adjustments, are most of a 48-photo mapping
    ba_local_images: Annotated[int, Field(ge=2, le=50)] = 4
    ba_local_iterations: PosInt = 10
    # incremental: at most this many photos (every 2^k-th in capture order) are mapped; the others are placed by
    # absolute pose against the mapped points, so that mapping stops growing faster than the photos (0: all mapped;
    # docs/benchmarks.md, SfM with many photos)
    keyframes: Annotated[int, Field(ge=0, le=100_000)] = 64


@dataclass(frozen=True, config=FROZEN)
class MasksConfig:
    """Automatic foreground masks (GrabCut seeded by SfM points) for views without alpha or masks/ file. Used only
    by the visual-hull method (``geometry.method = hull``); the default dense method needs no masks."""

    auto: Literal["missing", "off"] = "missing"  # off: such views are not used for the hull
    work_size: Annotated[int, Field(ge=16)] = 480  # long side GrabCut runs at
    iterations: PosInt = 5


@dataclass(frozen=True, config=FROZEN)
class GeometryConfig:
    # auto: a visual hull where every view has a given mask (alpha or masks/ file), else dense multi-view stereo;
    # dense: multi-view stereo always (given masks restrict it); hull: silhouettes only (automatic masks if needed)
    method: Literal["auto", "dense", "hull"] = "auto"
    voxel_resolution: Annotated[int, Field(ge=16, le=1024)] = 192  # hull cells along the object's longest side
    # the same without a GPU; 0: voxel_resolution. The demo sets 128: a third of the work of 192 for the CPU
    cpu_voxel_resolution: Annotated[int, Field(ge=0, le=1024)] = 0
    # views allowed to disagree with a hull voxel; -1: 0 for given masks, 3 % (<= 2) for automatic ones
    outlier_views: Annotated[int, Field(ge=-1)] = -1
    smoothing_iterations: Annotated[int, Field(ge=0)] = 10  # Taubin smoothing after marching cubes
    max_faces: Annotated[int, Field(ge=4)] = 200_000


@dataclass(frozen=True, config=FROZEN)
class DenseConfig:
    """Multi-view stereo (plane sweep, windowed NCC, geometric consistency) fused into a closed surface (TSDF)."""

    max_side: Annotated[int, Field(ge=64, le=8192)] = 960  # depth-map long side on a GPU
    planes: Annotated[int, Field(ge=8, le=1024)] = 160  # inverse-depth hypotheses
    neighbours: Annotated[int, Field(ge=1, le=32)] = 8  # source views per depth map
    best_k: Annotated[int, Field(ge=1, le=32)] = 3  # source scores averaged per hypothesis
    window: Annotated[int, Field(ge=3, le=15)] = 7  # NCC window side (odd)
    refine_rounds: Annotated[int, Field(ge=0, le=8)] = 2  # surface-following sweeps after the plane sweep
    min_score: Annotated[float, Field(ge=-1, le=1)] = 0.4
    min_consistent: Annotated[int, Field(ge=0, le=32)] = 2  # neighbouring depth maps that must agree
    # a view's sweep starts no nearer than this fraction of the nearest SfM points it sees (0: from the object's
    # bounding sphere alone, which puts a close-up's sweep almost at the lens; docs/design.md, Depth maps)
    sparse_near: Annotated[float, Field(ge=0, le=1)] = 0.5
    # the table the object stands on is one more hypothesis of every depth map, matched through its own homography:
    # the sweep's fronto-parallel planes miss a table seen at a grazing angle, the gap under a body seen from a low
    # photo, which then vouches for no free space (docs/design.md, Depth maps). It wins a pixel where its score is at
    # least support_min_score and no hypothesis of the sweep scores higher
    support_hypothesis: bool = True
    support_min_score: Annotated[float, Field(ge=-1, le=1)] = 0.8
    # those table depths weigh their whole match score as free space in fusion, not the share a stereo depth seen at
    # the same grazing angle gets: they are the plane's own (docs/design.md, Fusion)
    support_full_weight: bool = True
    resolution: Annotated[int, Field(ge=32, le=2048)] = 384  # TSDF voxels along the object's longest side
    cpu_max_side: Annotated[int, Field(ge=64, le=8192)] = 400  # without a GPU: a coarse result in minutes
    cpu_planes: Annotated[int, Field(ge=8, le=1024)] = 64
    cpu_resolution: Annotated[int, Field(ge=32, le=2048)] = 192
    # Gaussian blur of the fused field before marching cubes, as a fraction of the object's longest side, at least
    # 0.8 voxel (0: off): depth noise otherwise leaves bubbles and tunnels (handles) in the surface. A fraction: the
    # 0.8 voxel that closed the CPU's 192-voxel grid left tens of handles on the GPU's 384 voxels; 0.31 % is 1.2
    # voxels there (measured on three sets, docs/design.md, Fusion)
    field_blur: Annotated[float, Field(ge=0, le=0.05)] = 0.0031
    # the fused inside is closed before the blur by a cube whose half-width is this fraction of the object's longest
    # side, at least one voxel: depth noise's tunnels fill (0: off). 1/192: a voxel of the CPU's grid, two of the
    # GPU's 384 (docs/design.md, Fusion)
    close_size: Annotated[float, Field(ge=0, le=0.03)] = 1 / 192
    # how the depth maps become a closed surface: TSDF fusion with the silhouettes' hull, screened Poisson of the
    # oriented depth points, or hybrid: Poisson of the points near the TSDF surface, that surface filling where
    # stereo found nothing (docs/design.md, Meshing by screened Poisson)
    mesher: Literal["tsdf", "poisson", "hybrid"] = "tsdf"
    poisson_depth: Annotated[int, Field(ge=5, le=12)] = 9  # octree depth on a GPU machine
    cpu_poisson_depth: Annotated[int, Field(ge=5, le=12)] = 9
    poisson_trim: Annotated[float, Field(ge=0, lt=0.5)] = 0.02  # density quantile below which Poisson is trimmed
    # estimated silhouettes vote: a depth point is kept inside this fraction of the silhouettes of its views
    poisson_silhouette_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5
    # with estimated silhouettes, a measured part outside their hull is filled inside where this much match score
    # measured its surface in front and no view saw through (0: its core is left to the hull, a hollow shell)
    solid_hidden: Annotated[float, Field(ge=0)] = 1.0
    # estimated silhouettes keep what the depth maps measured: measured background stays background (and keeps a
    # gap between legs open) and measured object stays object when the views are made to agree
    silhouettes_keep_measured: bool = True
    # ... also inside the first views' hull, where it filled a hole the photos see through (a ring's): in whole
    # CPU jobs on eight sets better on bob (Chamfer-L1 0.80 -> 0.49 %), the same or a little better on six, the
    # armchair level (docs/design.md, the table through a hole); on the H200 bob's F@0.2 % 0.595 -> 0.705, the
    # relief disc 0.835 -> 0.858, the other seven within the spread (docs/benchmarks.md)
    silhouettes_open_core: bool = True
    # the second round's sure foreground only where the view's own first-round mask is (docs/design.md): off, on
    # an H100 it cost the armchair's thin tubes (F@0.2 % 0.637 -> 0.487) and moved three other sets by < 0.01
    silhouettes_core_in_first: bool = False
    # depth points lower than this share of the object's height above the table (or 2 % of its size, whichever
    # is less) seed the table, not the object: a flat object keeps the foot of its side
    silhouettes_base_margin_height: NonNeg = 0.05
    # depth points at the table (within that margin) under the object's footprint (its own points just above the
    # margin) are left to GrabCut instead of seeding sure background: a leg's foot lies in that band and was cut off
    # (docs/design.md, Feet on the table)
    silhouettes_base_open: bool = True
    silhouettes_foot_reach: NonNeg = 1.0  # the footprint grown by this many margins across
    # the silhouettes' edge cut again at the photo's size, in a band of this many working-size pixels (0: off)
    silhouettes_edge_band: NonNeg = 2.0
    # the fused surface's thin parts join the silhouettes up to a width that grows in views nearer than the median
    # one, by that nearness, at most this factor (1: the same width in every view)
    silhouettes_thin_near_scale: Annotated[float, Field(ge=1)] = 3.0
    # under that footprint the fusion's hull lets this share of the views dissent (elsewhere 2): a foot in the
    # contact shadow is missing from some estimated silhouettes (spot's: a median 6 of 43; 0: off)
    foot_dissent: Annotated[float, Field(ge=0, le=1)] = 0.25
    # ... only under the footprint's parts at most this many plane margins long (0: every part); a longer part is a
    # base, not a leg (measured on the CPU only: docs/benchmarks.md, Without a GPU)
    foot_dissent_length: NonNeg = 0.0
    # a fused vertex that no photo sees facing it (best cosine under this) is placed by a harmonic fill from the seen
    # surface around it, so that a membrane under a seat or a belly spans its rim; 0: off (docs/design.md, Fusion)
    unseen_facing: Annotated[float, Field(ge=0, lt=1)] = 0.45
    # ... unless at least this many photos see it on the outline where their silhouette holds it (a rim it placed)
    unseen_rim_views: Annotated[int, Field(ge=1, le=64)] = 1
    # ... and only where its normal points down by at most this (normal . up >= -value; 1: every rim holds, the
    # default): under a body no camera sees from below, the hull's membrane is made of the photos' lower outlines
    # (0.5 lifted the armchair's membrane and hollowed spot's belly on the CPU; docs/design.md, Fusion)
    unseen_rim_max_down: Annotated[float, Field(ge=0, le=1)] = 1.0
    # fixed groups of fewer vertices than this among the free ones are freed too (0: off)
    unseen_island_vertices: Annotated[int, Field(ge=0)] = 0


@dataclass(frozen=True, config=FROZEN)
class RefineConfig:
    enabled: Literal["auto", "on", "off"] = "auto"  # auto: on a GPU only
    levels: Annotated[int, Field(ge=1, le=4)] = 2  # coarse-to-fine levels
    image_size: Annotated[int, Field(ge=16, le=4096)] = 512  # long image side at the finest level
    iterations: PosInt = 250  # per level
    # photos rendered per step, drawn at random each step (0: as many as fit in the GPU's free memory, all if they do)
    views_per_step: Annotated[int, Field(ge=0)] = 0
    start_faces: Annotated[int, Field(ge=4)] = 30_000
    max_faces: Annotated[int, Field(ge=4)] = 250_000
    smoothness: Pos = 19.0  # largesteps lambda where the masks were given
    # largesteps lambda where any silhouette was estimated (photos without masks): finer detail than 19 gains F@0.2 %
    # +0.015 on average over five photo sets, two runs each (docs/design.md, Refinement)
    estimated_smoothness: Pos = 9.0
    step: Pos = 3e-2  # shape learning rate in normalised units (object in the unit sphere)
    photometric_weight: NonNeg = 2.0  # measured better than 1 on four sets
    silhouette_weight: NonNeg = 1.0
    normal_weight: NonNeg = 0.0  # pytorch3d regularisers, relative to the image losses (0 disables one)
    laplacian_weight: NonNeg = 0.0
    edge_weight: NonNeg = 0.0
    smoothness_decay: Pos = 1.0  # largesteps lambda is multiplied by this at each finer level
    alpha_coverage: bool = True  # fit silhouettes to the alpha matte's sub-pixel coverage
    # isotropic: a pymeshlab isotropic remesh before every level; isotropic_first: before the first only, midpoint
    # subdivision after (the remesh is CPU work that the GPU waits for); subdivide: no remeshing
    remesh: Literal["isotropic", "isotropic_first", "subdivide"] = "isotropic"
    # rounds of each isotropic remesh (split, collapse, flip, relax): its time on one CPU core grows with them
    remesh_iterations: Annotated[int, Field(ge=1, le=20)] = 4
    lr_final: Annotated[float, Field(gt=0, le=1)] = 1.0  # the last level's step decays (cosine) to this fraction
    estimated_silhouette_weight: NonNeg = 1.0  # silhouette weight of masks estimated from photos (given: 1)
    # photo-consistency between neighbouring photos warped through the mesh (zero-mean NCC): places the surface by
    # texture finer than the mesh's triangles (pipeline.appearance.photoconsistency); auto: where any silhouette was
    # estimated, on a GPU (given masks already place the outline)
    pair: Literal["auto", "on", "off"] = "auto"
    pair_weight: NonNeg = 0.2  # its weight where it is on
    pair_views: Annotated[int, Field(ge=1)] = 4  # photos per step that get the term, each with one neighbour
    pair_radius: Annotated[int, Field(ge=1, le=8)] = 2  # NCC window: (2 r + 1)^2 pixels of the level
    pair_blur: NonNeg = 0.0  # Gaussian blur of the photos for the term, pixels of the level (1: worse on four sets)
    pair_first_level: Annotated[int, Field(ge=0)] = 0  # the first refinement level that gets the term
    pair_last_level: Annotated[int, Field(ge=-1)] = -1  # the last one that gets it (-1: every level from the first)
    # per-photo colour gain and offset, fitted with the shape: phone photos differ in exposure and white balance
    view_gains: Literal["auto", "on", "off"] = "auto"  # auto: on where any silhouette was estimated
    # where silhouettes were estimated, no vertex moves further than this share of the object's radius from where
    # each level starts (0: no limit): parts missing from every estimated silhouette (an armchair's thin tubes)
    # thinned to strings the silhouettes no longer see and the photometric loss dragged a metre away
    estimated_max_move: NonNeg = 0.1
    # where silhouettes were estimated, each is cut to the start mesh's outline grown by this many pixels of the photo
    # (0: off): the estimated silhouettes hold the contact shadow under a body (a seat, a belly), and where the
    # fusion's unseen fill lifted the hull's membrane out of it they pull it back down; off until a lift rule tells a
    # membrane from a real underside such as spot's belly (docs/design.md, Fusion)
    estimated_outline_px: NonNeg = 0.0
    # where silhouettes were estimated, what the refinement fits instead of them (pipeline.appearance.refine.
    # outline_target): photos (GrabCut's silhouettes), outline (the fused surface's own outline in each photo, which
    # stereo, the table and the fill placed) or agree (each pixel where the two agree; the photos decide the rest)
    estimated_silhouettes: Literal["photos", "outline", "agree"] = "photos"
    # on a GPU, render each photo's window around the object (at most at the photo's own resolution) instead of the
    # whole frame: F@0.2 % +0.02-0.10 on five of six photo sets, level on the sixth, at the same cost
    crop: bool = True
    # CPU preview (pytorch3d rasteriser), used when enabled = "on" and there is no GPU
    cpu_image_size: Annotated[int, Field(ge=16)] = 128
    cpu_iterations: PosInt = 40
    cpu_faces: Annotated[int, Field(ge=4)] = 6_000


@dataclass(frozen=True, config=FROZEN)
class TextureConfig:
    """UV-textured outputs (xatlas atlas, photos baked in, then least-squares fitted to the photo pixels)."""

    enabled: bool = True
    size: Annotated[int, Field(ge=16, le=16384)] = 2048  # texture side, texels (GPU)
    cpu_size: Annotated[int, Field(ge=16, le=16384)] = 1024
    max_faces: Annotated[int, Field(ge=4)] = 120_000
    cpu_max_faces: Annotated[int, Field(ge=4)] = 60_000
    view_weight_power: NonNeg = 4.0  # bake weight of a photo: cos(normal, view direction)^this
    atlas_pieces: Annotated[int, Field(ge=0, le=64)] = 0  # 0: one per 2000 faces, at most 64
    # lay the atlas out in a child process while the refinement's last level runs (auto: on a GPU, where that level
    # leaves the CPU free; on a few CPU cores the two would only share them)
    atlas_ahead: Literal["auto", "on", "off"] = "auto"
    fit: bool = True
    fit_iterations: PosInt = 60
    fit_prior: NonNeg = 0.1
    fit_smooth: NonNeg = 1.0
    fit_view_power: NonNeg = 0.0
    cpu_fit_views: Annotated[int, Field(ge=0)] = 0


@dataclass(frozen=True, config=FROZEN)
class ExportConfig:
    """What the outbox carries besides the mesh, so that other tools open it as it is (nerfstudio, gsplat, COLMAP,
    a web page)."""

    images: bool = True  # the photos the cameras describe, in images/ (the video's sampled frames too)
    web_faces: Annotated[int, Field(ge=100)] = 50_000  # mesh_web.glb: face budget of the light copy for the web
    web_texture_size: Annotated[int, Field(ge=64, le=8192)] = 1024  # mesh_web.glb: texture side (stored as JPEG)
    surface_points: Annotated[int, Field(ge=100)] = 100_000  # points.ply samples when no dense or SfM points exist
    thumbnail_size: Annotated[int, Field(ge=64, le=4096)] = 512  # thumbnail.jpg, the textured mesh's poster


Degrees = Annotated[float, Field(gt=0, le=90)]
Azimuth = Annotated[float, Field(ge=0, le=360)]


@dataclass(frozen=True, config=FROZEN)
class ReportConfig:
    """The report and its grade. Each check has a pass and a warn threshold (fail beyond warn); for checks where
    higher is better the pass threshold must be >= the warn one, for lower-is-better checks <=."""

    render_size: Annotated[int, Field(ge=16, le=4096)] = 384
    gt_samples: Annotated[int, Field(ge=10)] = 200_000
    fscore_tau: Annotated[float, Field(gt=0, lt=1)] = 0.01  # F-score threshold, fraction of the GT diagonal
    grade_iou_pass: Fraction = 0.9
    grade_iou_warn: Fraction = 0.75
    grade_psnr_pass: NonNeg = 25.0
    grade_psnr_warn: NonNeg = 20.0
    # coverage: share of the final surface (by area) seen by >= coverage_min_views photos, each within
    # coverage_max_angle_deg of the surface normal, not hidden by the mesh itself
    coverage_min_views: Annotated[int, Field(ge=1, le=10)] = 2
    coverage_max_angle_deg: Degrees = 75.0
    grade_coverage_pass: Fraction = 0.9
    grade_coverage_warn: Fraction = 0.7
    # the largest gap (degrees of azimuth around the up axis) between neighbouring cameras; lower is better
    grade_spread_gap_pass_deg: Azimuth = 90.0
    grade_spread_gap_warn_deg: Azimuth = 150.0
    # share of photos in which the object touches the image border (cut off); lower is better
    grade_border_cut_pass: Fraction = 0.1
    grade_border_cut_warn: Fraction = 0.34
    # share of the object's measured height between the lowest part the photos measured (SfM and stereo points
    # above the support plane) and where the mesh ends; above it the grade warns that the lower part is missing.
    # Measured on H200 and CPU benchmark jobs (docs/design.md, Missing parts): whole meshes 0-5 % (spot's short
    # hooves), meshes that lost a stool's or an armchair's legs 6.4-28 %
    grade_base_gap_pass: Fraction = 0.06
    # share of the held-out photos' observations of object points (SfM) where the mesh renders no pixel there; above
    # it the grade warns that a part the photos show is missing
    grade_heldout_points_pass: Fraction = 0.05
    grade_heldout_points_min_missed: Annotated[int, Field(ge=0)] = 20
    # ground-truth F-score (only when gt.ply/obj/glb is given)
    grade_fscore_pass: Fraction = 0.9
    grade_fscore_warn: Fraction = 0.7
    # share of faces that self-intersect: below the first it is not a concern on its own; lower is better
    grade_self_intersections_pass: Fraction = 0.01
    grade_self_intersections_warn: Fraction = 0.05
    visibility_size: Annotated[int, Field(ge=32, le=2048)] = 192  # long side of the depth maps for visibility
    # handles (tunnels through the surface, the genus summed over the pieces); lower is better. A scanned object
    # has few (a mug's handle, a chair's gaps); hundreds mean a surface torn into tunnels by noise
    grade_handles_pass: Annotated[int, Field(ge=0)] = 3
    grade_handles_warn: Annotated[int, Field(ge=0)] = 20

    @model_validator(mode="after")
    def _ordered(self) -> "ReportConfig":
        higher = ("iou", "psnr", "coverage", "fscore")
        lower = ("spread_gap", "border_cut", "self_intersections", "handles")
        for k in higher:
            p, w = _pass_warn(self, k)
            if p < w:
                raise ValueError(f"grade_{k}_pass ({p}) must be >= grade_{k}_warn ({w}): higher is better")
        for k in lower:
            p, w = _pass_warn(self, k)
            if p > w:
                raise ValueError(f"grade_{k}_pass ({p}) must be <= grade_{k}_warn ({w}): lower is better")
        return self


def _pass_warn(cfg: Any, key: str) -> tuple[float, float]:
    suffix = "_deg" if key == "spread_gap" else ""
    return getattr(cfg, f"grade_{key}_pass{suffix}"), getattr(cfg, f"grade_{key}_warn{suffix}")


SECTIONS: dict[str, type] = {
    "limits": LimitsConfig, "images": ImagesConfig, "sfm": SfmConfig, "masks": MasksConfig,
    "geometry": GeometryConfig, "dense": DenseConfig, "refine": RefineConfig, "texture": TextureConfig, "report": ReportConfig,
    "export": ExportConfig,
}


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)
    images: ImagesConfig = dataclasses.field(default_factory=ImagesConfig)
    sfm: SfmConfig = dataclasses.field(default_factory=SfmConfig)
    masks: MasksConfig = dataclasses.field(default_factory=MasksConfig)
    geometry: GeometryConfig = dataclasses.field(default_factory=GeometryConfig)
    dense: DenseConfig = dataclasses.field(default_factory=DenseConfig)
    refine: RefineConfig = dataclasses.field(default_factory=RefineConfig)
    texture: TextureConfig = dataclasses.field(default_factory=TextureConfig)
    report: ReportConfig = dataclasses.field(default_factory=ReportConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def section_hash(self, sections: tuple[str, ...]) -> str:
        """Stable hash of the named sections: a stage's checkpoint is valid only for this hash."""
        d = self.to_dict()
        blob = json.dumps({s: d[s] for s in sorted(sections)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    """One section from ``values``; unknown keys or invalid values raise :class:`ConfigError`."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"config [{name}]: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    try:
        return cls(**dict(values))
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            if not err["loc"]:  # a check across keys (a model validator): its message names them
                msgs.append(f"config [{name}]: {err['msg'].removeprefix('Value error, ')}")
                continue
            key = str(err["loc"][0])
            msgs.append(f"config {name}.{key} = {err.get('input')!r}: {err['msg'].lower()}")
        raise ConfigError("; ".join(msgs)) from None


def build_pipeline_settings(overrides: Mapping[str, Mapping[str, Any]]) -> PipelineSettings:
    """Pipeline settings from ``{section: {key: value}}`` (other sections are ignored)."""
    return PipelineSettings(**{name: build_section(name, cls, overrides.get(name, {}))
                               for name, cls in SECTIONS.items()})
