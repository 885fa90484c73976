"""Stage 1: find the poses, validate every image by content, check that masks exist. Fails with one message
that lists everything the user has to fix, rather than one problem per attempt."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cameras import FrameSpec, PoseSource, read_pose_source
from pipeline.context import InputError, JobContext
from pipeline.images import IMAGE_SUFFIXES, Rejected, inside, validate_image
from pipeline.stages.base import Stage

GT_NAMES = ("gt.ply", "gt.obj", "gt.glb")
MASK_DIR = "masks"


@dataclass(frozen=True)
class Frame:
    name: str  # relative to the job folder
    width: int
    height: int
    format: str
    has_alpha: bool
    mask_file: str | None  # relative path of a file in masks/, when one matches


@dataclass(frozen=True)
class Manifest:
    pose_kind: str
    pose_path: str
    frames: tuple[Frame, ...]
    rejected: tuple[Rejected, ...]
    missing: tuple[str, ...]
    gt_mesh: str | None
    total_bytes: int
    warnings: tuple[str, ...] = field(default=())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def load(cls, stage_dir: Path) -> "Manifest":
        d = json.loads((stage_dir / "manifest.json").read_text())
        return cls(pose_kind=d["pose_kind"], pose_path=d["pose_path"],
                   frames=tuple(Frame(**f) for f in d["frames"]),
                   rejected=tuple(Rejected(**r) for r in d["rejected"]), missing=tuple(d["missing"]),
                   gt_mesh=d["gt_mesh"], total_bytes=d["total_bytes"], warnings=tuple(d["warnings"]))


def _listing(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def find_mask_file(job_dir: Path, frame_name: str) -> str | None:
    mdir = job_dir / MASK_DIR
    if not mdir.is_dir():
        return None
    stem = Path(frame_name).stem
    base = Path(frame_name).name
    for cand in [mdir / base, *(mdir / (stem + s) for s in (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")),
                 *(mdir / (base + s) for s in (".png",))]:
        if cand.is_file():
            return str(cand.relative_to(job_dir))
    return None


def unposed_images(job_dir: Path) -> list[str]:
    """Image files of a folder without poses, sorted by name (the order sequential matching assumes)."""
    root = job_dir / "images" if (job_dir / "images").is_dir() else job_dir
    return sorted(str(p.relative_to(job_dir)) for p in root.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def escaping_symlinks(job_dir: Path) -> list[str]:
    bad = []
    for root, dirs, files in os.walk(job_dir):
        for name in dirs + files:
            p = Path(root) / name
            if p.is_symlink() and not inside(p, job_dir):
                bad.append(str(p.relative_to(job_dir)))
    return sorted(bad)


def folder_bytes(job_dir: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(job_dir):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                pass
    return total


class IngestStage(Stage):
    name = "ingest"
    weight = 5
    sections = ("limits", "masks")

    def run(self, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
        job_dir, limits = ctx.input_dir, ctx.settings.limits
        problems: list[str] = []
        total = folder_bytes(job_dir)  # lstat only: never follows a link
        if total > limits.max_job_mb * 1e6:
            problems.append(f"the folder holds {total / 1e6:.0f} MB, over the {limits.max_job_mb:g} MB per-job limit (limits.max_job_mb)")
        bad_links = escaping_symlinks(job_dir)
        if bad_links:
            # refused before anything else is read: not even the poses or one image behind such a link (a
            # linked images/ folder, transforms.json or masks/) may be opened to list the other problems
            problems.insert(0, f"symbolic links point outside the job folder (not allowed; copy the files in): "
                               f"{_listing(bad_links)}")
            raise InputError("the job folder cannot be processed:\n- " + "\n- ".join(problems))
        source = read_pose_source(job_dir)
        if source is None:
            # no poses: structure from motion on every image of the folder (images/ if there is one)
            names = unposed_images(job_dir)
            if not names:
                raise InputError("the job folder contains no images (looked for .jpg, .png, .webp, .tif in "
                                 "images/ and at the top level)")
            source = PoseSource(kind="sfm", path=job_dir, frames=tuple(
                FrameSpec(name=n, K=np.eye(3), w2c=np.eye(4), width=None, height=None, dist=()) for n in names),
                missing=())
        if len(source.frames) > limits.max_images:
            problems.append(f"{len(source.frames)} images, more than the {limits.max_images} allowed (limits.max_images)")
        frames: list[Frame] = []
        rejected: list[Rejected] = []
        for i, spec in enumerate(source.frames):
            ctx.progress(i / max(1, len(source.frames)))
            res = validate_image(job_dir / spec.name, job_dir, limits)
            if isinstance(res, Rejected):
                rejected.append(res)
                ctx.log.warning("rejected %s: %s", res.file, res.reason)
                continue
            frames.append(Frame(name=spec.name, width=res.width, height=res.height, format=res.format,
                                has_alpha=res.has_alpha, mask_file=find_mask_file(job_dir, spec.name)))
        warnings: list[str] = []
        src_name = {"transforms": source.path.name, "colmap": "the COLMAP model"}.get(source.kind, "the folder")
        if source.missing:
            warnings.append(f"{len(source.missing)} of {len(source.missing) + len(source.frames)} frames listed in "
                            f"{src_name} are missing: {_listing(list(source.missing))}")
        if rejected:
            warnings.append(f"{len(rejected)} image(s) rejected: " + "; ".join(f"{r.file} {r.reason}" for r in rejected[:10]))
        if len(frames) < limits.min_images:
            problems.append(f"only {len(frames)} usable image(s); at least {limits.min_images} are needed "
                            f"(limits.min_images). Add more views of the object from all sides")
        masked = [f for f in frames if f.has_alpha or f.mask_file]
        auto = ctx.settings.masks.auto != "off"
        if frames and not masked and not auto:
            problems.append("no masks: the images have no alpha channel and there is no masks/ folder. Add one mask "
                            "per image as masks/<image name>.png (white = object), use RGBA images with a "
                            "transparent background, or turn automatic masks on (masks.auto = missing)")
        elif len(masked) < len(frames):
            no_mask = [f.name for f in frames if not (f.has_alpha or f.mask_file)]
            if auto:
                warnings.append(f"{len(no_mask)} image(s) have no mask; automatic masks are computed for them "
                                f"(check masks_preview.jpg): {_listing(no_mask)}")
            else:
                warnings.append(f"{len(no_mask)} image(s) have no mask and are not used for the shape: {_listing(no_mask)}")
                if len(masked) < limits.min_images:
                    problems.append(f"only {len(masked)} image(s) have masks; at least {limits.min_images} are needed. "
                                    f"Missing masks: {_listing(no_mask)}")
        if problems:
            # missing files are worth knowing about when the job fails for any reason
            notes = [w for w in warnings if "missing" in w or "rejected" in w]
            raise InputError("the job folder cannot be processed:\n- " + "\n- ".join(problems + notes))
        gt = next((n for n in GT_NAMES if (job_dir / n).is_file()), None)
        manifest = Manifest(pose_kind=source.kind, pose_path=str(source.path.relative_to(job_dir)) if source.path != job_dir else ".",
                            frames=tuple(frames), rejected=tuple(rejected), missing=source.missing, gt_mesh=gt,
                            total_bytes=total, warnings=tuple(warnings))
        (out_dir / "manifest.json").write_text(manifest.to_json())
        for w in warnings:
            ctx.log.warning("%s", w)
        return {"images": len(frames), "rejected": len(rejected), "missing": len(source.missing), "poses": source.kind}
