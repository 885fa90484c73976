"""What each device-dependent stage writes into ``stats.json``: one frozen dataclass per stage, so the CPU path and
the GPU path always produce the same keys (the report template and later stages read them with StrictUndefined).

A field that does not apply to a path is ``None``, never missing."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class GeometrySummary:
    """The geometry stage's result. ``note``: a sentence for the report about a reduced result (the CPU
    fallback, a tolerated bad mask), else None. ``dense``: the dense method's own statistics; ``grid``,
    ``voxel_size``, ``outlier_views``, ``raw_faces``: the hull's."""

    method: str
    detail: str
    views_used: int
    faces: int
    watertight: bool
    note: str | None = None
    dense: dict[str, Any] | None = None
    resolution: int | None = None
    voxel_size: float | None = None
    grid: list[int] | None = None
    outlier_views: int | None = None
    raw_faces: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RefineSummary:
    """The refine stage's result: ``method`` says what ran or why nothing did; the rest is None when it did not
    run. ``backend`` is the rasteriser (nvdiffrast on a GPU, pytorch3d on the CPU)."""

    method: str
    faces: int
    ran: bool = False
    backend: str | None = None
    watertight: bool | None = None
    losses: list[float] | None = None
    levels: list[list[int]] | None = None
    views_per_step: int | None = None
    smoothness: float | None = None  # largesteps' lambda used (refine.estimated_smoothness for estimated silhouettes)
    regularisers: Any = None
    remesh: Any = None
    silhouette_target: str | None = None
    estimated_silhouettes: int | None = None
    view_gains: Any = None
    # the share of the estimated silhouettes' pixels that refine.estimated_outline_px cut (None: off)
    outline_cut: float | None = None
    # refine.estimated_silhouettes where it is not "photos": what replaced the estimated silhouettes, and the share of
    # their pixels whose target it changed (None: the estimated silhouettes were fitted as they are)
    outline_source: str | None = None
    outline_changed: float | None = None
    # the plane no vertex went below (nx, ny, nz, height; the support plane, for photos without masks), or None
    floor: list[float] | None = None
    # the last level's mean window width as a share of the photo's (refine.crop; 1.0: whole photos)
    window_share: float | None = None
    seconds_per_level: list[float] | None = None
    setup_seconds_per_level: list[float] | None = None  # of each level's seconds: its mesh (remeshing) and targets
    mesh_seconds_per_level: list[float] | None = None  # of the setup: the level's mesh alone
    # per level, the share of the object pixels that refine.pair's photo-consistency compared (None: off)
    pair_share_per_level: list[float] | None = None
    # where the stage's time went besides the levels: loading the photos and masks, the start mesh and the
    # rasteriser ("prepare"), and cleaning and writing the result ("finish"); "prepare.<part>" splits the first into
    # loading the mesh, the rasteriser, the photos and masks, the start mesh's decimation and the silhouette targets
    seconds: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summary_keys(cls: type) -> frozenset[str]:
    """The keys a summary dataclass always writes."""
    return frozenset(f.name for f in dataclasses.fields(cls))
