"""Stage 1: find the poses, validate every image by content, sample videos, check that masks exist, and account
for every file of the job folder: each one is used or listed in the manifest's ``rejected`` with a reason a person
can act on. Fails with one message that lists everything the user has to fix, rather than one problem per attempt."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from PIL import Image

from pipeline.cameras.cameras import TRANSFORMS_NAMES, FrameSpec, PoseSource, read_pose_source
from pipeline.context import CANCEL_MARKER, READY_MARKER, InputError, JobContext
from pipeline.io.files import is_special, open_regular, printable, read_head, regular_file, special_reason
from pipeline.io.images import IMAGE_SUFFIXES, Rejected, inside, photo_pool, sniff_format, validate_image
from pipeline.cameras.scale import SCALE_FILE, ScaleFileError, read_scale_spec
from pipeline.stages.base import Stage, stage_dir
from pipeline.io.video import VIDEO_SUFFIXES, VideoUnreadable, sample_video

GT_NAMES = ("gt.ply", "gt.obj", "gt.glb")
MASK_DIR = "masks"
FRAMES_DIR = "frames"  # in the ingest stage folder: frames sampled from videos (never written into the inbox)
RAW_SUFFIXES = {".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw", ".raw"}
COLMAP_FILES = {"cameras", "images", "points3D", "rigs", "frames"}  # a sparse model's files (.bin or .txt)
OTHER_IMAGE_SUFFIXES = {".gif", ".bmp", ".avif", ".jxl", ".psd", ".exr", ".hdr", ".ico", ".svg"}


@dataclass(frozen=True)
class Frame:
    name: str  # relative to the job folder
    width: int
    height: int
    format: str
    has_alpha: bool
    mask_file: str | None  # relative path of the frame's mask (transforms.json mask_path, or a match in masks/)
    # the video (relative to the job folder) this frame was sampled from; its pixels are then in the ingest
    # stage folder under frames/, not in the job folder. Read them through Manifest.path_of / frame_path.
    source: str | None = None


@dataclass(frozen=True)
class VideoUse:
    """A video whose frames are used: ``frames`` sampled from ``decoded`` frames of a ``duration_s`` clip."""

    file: str
    frames: int
    decoded: int
    duration_s: float
    fps: float


def frame_path(ctx: JobContext, frame: Frame) -> Path:
    """The file holding a frame's pixels: in the job folder, or sampled from a video into the ingest stage."""
    if frame.source is None:
        return ctx.input_dir / frame.name
    return stage_dir(ctx, "ingest") / FRAMES_DIR / frame.name


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
    videos: tuple[VideoUse, ...] = field(default=())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @staticmethod
    def path_of(frame: Frame, ctx: JobContext) -> Path:
        """Where to load ``frame`` from (see :func:`frame_path`); stages never build the path themselves."""
        return frame_path(ctx, frame)

    @classmethod
    def load(cls, stage_dir: Path) -> "Manifest":
        d = json.loads((stage_dir / "manifest.json").read_text())
        return cls(pose_kind=d["pose_kind"], pose_path=d["pose_path"],
                   frames=tuple(Frame(**f) for f in d["frames"]),
                   rejected=tuple(Rejected(**r) for r in d["rejected"]), missing=tuple(d["missing"]),
                   gt_mesh=d["gt_mesh"], total_bytes=d["total_bytes"], warnings=tuple(d["warnings"]),
                   videos=tuple(VideoUse(**v) for v in d.get("videos", ())))


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


def image_root(job_dir: Path) -> Path:
    """Where a folder without poses keeps its photos and videos: images/ when there is one, else the top level."""
    return job_dir / "images" if (job_dir / "images").is_dir() else job_dir


def unposed_images(job_dir: Path, suffixes: set[str] = IMAGE_SUFFIXES) -> list[str]:
    """Image (or, with ``suffixes``, video) files of a folder without poses, sorted by name (the order
    sequential matching assumes)."""
    root = image_root(job_dir)
    return sorted(str(p.relative_to(job_dir)) for p in root.iterdir()
                  if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def duplicate_photos(job_dir: Path, names: list[str]) -> dict[str, tuple[str, str]]:
    """Photos that repeat another one: name -> (the photo it repeats, which is kept: the first; "name" or
    "bytes"). Byte-identical copies, and one shot saved in two formats (IMG_1.HEIC and IMG_1.JPG, as phones
    export): SfM would match a view with itself. :func:`duplicate_reason` words it once the kept photo is known
    to be used or not."""
    out: dict[str, tuple[str, str]] = {}
    seen_digest: dict[str, str] = {}
    seen_stem: dict[str, str] = {}
    for n in names:
        stem = str(Path(n).with_suffix("")).lower()
        if stem in seen_stem:
            out[n] = (seen_stem[stem], "name")
            continue
        try:
            digest = file_digest(job_dir / n)
        except OSError:
            continue  # validation reports unreadable files
        if digest in seen_digest:
            out[n] = (seen_digest[digest], "bytes")
            continue
        seen_digest[digest] = n
        seen_stem[stem] = n
    return out


def duplicate_reason(kept: str, how: str, kept_refused: str | None) -> str:
    """Why a duplicate of ``kept`` is not used; ``kept_refused``: why ``kept`` itself is not used, if
    it is not (then "only kept is used" would be false: the user must replace both). ``how``: "name" or "bytes"."""
    what = (f"has the same name as {kept} (one photo saved in two formats?)" if how == "name"
            else f"is a byte-for-byte copy of {kept}")
    if kept_refused:
        return f"{what}, and {kept} is not used either: it {kept_refused}. Replace it with a usable photo"
    return f"{what}; only {kept} is used"


def live_photo_clips(videos: list[str], photos: list[str]) -> dict[str, str]:
    """Videos that are the Live Photo clip of a photo (IMG_1.MOV beside IMG_1.HEIC): name -> reason."""
    by_stem = {str(Path(p).with_suffix("")).lower(): p for p in photos}
    return {v: f"is the Live Photo clip of {by_stem[k]}; the photo is used (it is sharper)"
            for v in videos if (k := str(Path(v).with_suffix("")).lower()) in by_stem}


def why_unused(rel: str, head: bytes, pose_kind: str, pose_name: str, root: str) -> str:
    """A sentence saying why a file of the job folder is not used and what to do, from its name and first bytes.

    rel: path relative to the job folder; pose_kind: "transforms" | "colmap" | "sfm"; root: the folder a job
    without poses reads its photos from ("." or "images")."""
    p = Path(rel)
    suffix = p.suffix.lower()
    if any(part.startswith(".") for part in p.parts):
        return "is a hidden file (its name starts with '.', e.g. macOS metadata) and is ignored"
    if suffix in RAW_SUFFIXES:
        return "is a camera RAW file, which is not read; export it as JPEG (or 16-bit TIFF) and add that instead"
    if suffix in OTHER_IMAGE_SUFFIXES:
        return f"is a {suffix[1:].upper()} file, which is not read; convert it to PNG or JPEG"
    if p.parts[0] == MASK_DIR:
        return (f"is in {MASK_DIR}/ but matches no image used in this job (a mask is {MASK_DIR}/<image name>.png, "
                f"white = object)")
    if p.name in TRANSFORMS_NAMES or (p.name.startswith("transforms") and suffix == ".json"):
        return f"is not read: the poses come from {pose_name}"
    if suffix in IMAGE_SUFFIXES:
        if pose_kind == "transforms":
            return f"is not listed in {pose_name}, so it has no camera pose; add a frame for it or remove it"
        if pose_kind == "colmap":
            return "has no registered pose in the COLMAP model; register it or remove it"
        where = "directly in images/" if root == "images" else "at the top level of the job folder"
        return f"is not {where}, where the photos of a job without poses are read from; move it there"
    if suffix in VIDEO_SUFFIXES:
        if pose_kind in ("transforms", "colmap"):
            return ("is a video; with camera poses given only the images they list are used (a video's frames "
                    "have no poses). Remove the poses to have the video sampled, or drop the video")
        where = "directly in images/" if root == "images" else "at the top level of the job folder"
        return f"is a video that is not {where}, where videos are read from; move it there"
    fmt = sniff_format(head)
    if fmt is not None:
        return f"is a {fmt} image but its name does not end in an image suffix; rename it (e.g. to .jpg or .png)"
    return (f"is not an input hotmesh reads (photos, videos, transforms.json, a COLMAP model, {MASK_DIR}/, "
            f"{SCALE_FILE}, gt.ply)")


def job_files(job_dir: Path) -> list[str]:
    """Every file of the job folder, relative, sorted (symbolic links included, not followed)."""
    out = []
    for root, dirs, files in os.walk(job_dir):
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            out.append(str((Path(root) / name).relative_to(job_dir)))
    return sorted(out)


def read_by_name(rel: str) -> bool:
    """Whether hotmesh opens a file of this name without listing the folder first: poses (transforms.json, a COLMAP
    model's files), scale.json, the reference mesh."""
    p = Path(rel)
    return (p.name in TRANSFORMS_NAMES or p.name in (SCALE_FILE, "project.ini", *GT_NAMES)
            or (p.stem in COLMAP_FILES and p.suffix in (".bin", ".txt")))


def special_entries(job_dir: Path) -> dict[str, str]:
    """FIFOs, sockets and devices in the job folder (relative path -> why not used), found by lstat: none of
    them is ever opened (a FIFO blocks its reader until a writer comes, possibly forever)."""
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(job_dir):
        for name in files + dirs:
            p = Path(root) / name
            try:
                mode = p.lstat().st_mode
            except OSError:
                continue
            if is_special(mode):
                out[str(p.relative_to(job_dir))] = special_reason(mode)
    return out


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
    sections = ("limits", "masks", "images")  # images: images.video_frames decides the sampled frames

    def run(self, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
        job_dir, limits = ctx.input_dir, ctx.settings.limits
        problems: list[str] = []
        if job_dir.is_symlink():  # the daemon never makes a job of a link; a folder replaced by one later
            raise InputError("the job folder is a symbolic link to a folder outside the inbox, and no file behind "
                             "it is read: copy the folder into the inbox instead of linking it")
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
        special = special_entries(job_dir)
        by_name = sorted(rel for rel in special if read_by_name(rel))
        if by_name:
            # the poses, scale or reference mesh are read by their name: a FIFO there would block the reader, so the
            # job cannot go on without it (a FIFO anywhere else is only listed as not used)
            raise InputError("the job folder cannot be processed:\n- " + "\n- ".join(
                f"{rel} {special[rel]}; hotmesh reads a file of that name, so put the real file there" for rel in by_name))
        try:
            read_scale_spec(job_dir)  # checked here so a broken scale.json fails the job before any work
        except ScaleFileError as e:
            problems.append(str(e))
        skipped: dict[str, str] = {}  # file -> why it is not used (beyond what validation rejects)
        videos: list[VideoUse] = []
        frames: list[Frame] = []
        rejected: list[Rejected] = []
        try:
            source = read_pose_source(job_dir)
        except InputError as e:
            if not problems:
                raise
            # one message with everything to fix: the folder's problems and the pose file's
            raise InputError("the job folder cannot be processed:\n- " + "\n- ".join(problems + [str(e)])) from None
        if source is None:
            source, frames, rejected, videos = self._unposed(ctx, out_dir, skipped)
        else:
            if len(source.frames) > limits.max_images:
                problems.append(f"{len(source.frames)} images, more than the {limits.max_images} allowed (limits.max_images)")
            frames, rejected = self._validate(ctx, [(s, job_dir / s.name, None) for s in source.frames], 0.0, 1.0)
        warnings: list[str] = []
        src_name = {"transforms": source.path.name, "colmap": "the COLMAP model"}.get(source.kind, "the folder")
        if source.missing:
            warnings.append(f"{len(source.missing)} of {len(source.missing) + len(source.frames)} frames listed in "
                            f"{src_name} are missing: {_listing(list(source.missing))}")
        if source.missing_masks:
            warnings.append(f"{len(source.missing_masks)} mask_path file(s) listed in {src_name} are missing; those "
                            f"frames use {MASK_DIR}/ or automatic masks: {_listing(list(source.missing_masks))}")
        for v in videos:
            warnings.append(f"{v.file}: {v.frames} frames sampled from {v.decoded} ({v.duration_s:.1f} s clip), the "
                            f"sharpest of each of {v.frames} equal parts (images.video_frames)")
        rejected += self._unused(job_dir, source, frames, rejected, videos, skipped)
        if rejected:
            warnings.append(f"{len(rejected)} file(s) not used: " + "; ".join(f"{r.file} {r.reason}" for r in rejected[:10])
                            + (f"; and {len(rejected) - 10} more (see the report's list)" if len(rejected) > 10 else ""))
        if len(frames) < limits.min_images:
            problems.append(f"only {len(frames)} usable image(s); at least {limits.min_images} are needed "
                            f"(limits.min_images). Add more views of the object from all sides")
        masked = [f for f in frames if f.has_alpha or f.mask_file]
        no_mask = [f.name for f in frames if not (f.has_alpha or f.mask_file)]
        hull_only = ctx.settings.geometry.method == "hull"
        if no_mask and not hull_only:
            warnings.append(f"{len(no_mask)} image(s) have no mask: the shape comes from multi-view stereo and "
                            f"silhouettes estimated from the photos (a finished job publishes them as masks.zip for checking): "
                            f"{_listing(no_mask)}")
        elif no_mask and ctx.settings.masks.auto != "off":
            warnings.append(f"{len(no_mask)} image(s) have no mask; automatic masks are computed for them "
                            f"(the report shows them for checking): {_listing(no_mask)}")
        elif no_mask:
            if not masked:
                problems.append("no masks, and geometry.method = hull with masks.auto = off: add one mask per image "
                                "as masks/<image name>.png (white = object), use RGBA images with a transparent "
                                "background, or set geometry.method = auto")
            else:
                warnings.append(f"{len(no_mask)} image(s) have no mask and are not used for the shape: "
                                f"{_listing(no_mask)}")
                if len(masked) < limits.min_images:
                    problems.append(f"only {len(masked)} image(s) have masks; at least {limits.min_images} are "
                                    f"needed. Missing masks: {_listing(no_mask)}")
        if problems:
            # the files left out are what the user most needs to see when the job fails for any reason
            notes = [w for w in warnings if "missing" in w or "not used" in w]
            if rejected and len(rejected) > 10:
                notes.append("all files not used: " + "; ".join(f"{r.file} {r.reason}" for r in rejected[10:60]))
            raise InputError("the job folder cannot be processed:\n- " + "\n- ".join(problems + notes))
        gt = next((n for n in GT_NAMES if (job_dir / n).is_file()), None)
        manifest = Manifest(pose_kind=source.kind, pose_path=str(source.path.relative_to(job_dir)) if source.path != job_dir else ".",
                            frames=tuple(frames), rejected=tuple(rejected), missing=source.missing, gt_mesh=gt,
                            total_bytes=total, warnings=tuple(warnings), videos=tuple(videos))
        (out_dir / "manifest.json").write_text(manifest.to_json())
        for w in warnings:
            ctx.log.warning("%s", w)
        return {"images": len(frames), "rejected": len(rejected), "missing": len(source.missing), "poses": source.kind,
                "videos": len(videos)}

    @staticmethod
    def _validate(ctx: JobContext, items: list[tuple[FrameSpec, Path, str | None]], lo: float,
                  hi: float) -> tuple[list[Frame], list[Rejected]]:
        """Validate each (spec, file, video it came from) fully; progress runs from ``lo`` to ``hi``."""
        frames: list[Frame] = []
        rejected: list[Rejected] = []
        # a full decode of each photo, on threads (decoding releases the GIL); results are taken in order, so the
        # manifest and the log do not depend on which thread finished first
        with photo_pool() as pool:
            checked = [pool.submit(validate_image, path, path.parent if video else ctx.input_dir,
                                   ctx.settings.limits) for _, path, video in items]
            results = []
            for i, fut in enumerate(checked):
                ctx.progress(lo + (hi - lo) * i / max(1, len(items)))
                results.append(fut.result())
        for (spec, path, video), res in zip(items, results):
            if isinstance(res, Rejected):
                res = Rejected(spec.name if video is None else f"{video} ({spec.name})", res.reason)
                rejected.append(res)
                ctx.log.warning("rejected %s: %s", printable(res.file), res.reason)  # a name may hold a newline
                continue
            mask = spec.mask_path or (find_mask_file(ctx.input_dir, spec.name) if video is None else None)
            if mask and not regular_file(ctx.input_dir / mask):
                mask = None  # a FIFO or device named as a mask is never read; it is listed as not used
            frames.append(Frame(name=spec.name, width=res.width, height=res.height, format=res.format,
                                has_alpha=res.has_alpha, mask_file=mask, source=video))
        return frames, rejected

    def _unposed(self, ctx: JobContext, out_dir: Path, skipped: dict[str, str]
                 ) -> tuple[PoseSource, list[Frame], list[Rejected], list[VideoUse]]:
        """A folder without poses: its photos, or (with too few photos) frames sampled from its videos.

        Photos and video frames are not mixed: structure from motion solves one shared camera, and a video's lens,
        zoom and resolution differ from the photos'."""
        job_dir, limits = ctx.input_dir, ctx.settings.limits
        photos = unposed_images(job_dir)
        clips = unposed_images(job_dir, VIDEO_SUFFIXES)
        if not photos and not clips:
            root = "images" if image_root(job_dir) != job_dir else "."
            special = special_entries(job_dir)
            listed = [f"{n} {special.get(n) or why_unused(n, read_head(job_dir / n), 'sfm', 'the folder', root)}"
                      for n in job_files(job_dir)[:20]]
            raise InputError("the job folder contains no images or videos (looked for .jpg, .png, .webp, .tif, .heic, "
                             ".mp4, .mov in images/ and at the top level)" + "".join(f"\n- {x}" for x in listed))
        skipped.update(live_photo_clips(clips, photos))
        clips = [c for c in clips if c not in skipped]
        duplicates = duplicate_photos(job_dir, photos)
        photos = [p for p in photos if p not in duplicates]
        if len(photos) > limits.max_images:
            raise InputError(f"{len(photos)} images, more than the {limits.max_images} allowed (limits.max_images)")
        spec = lambda n: FrameSpec(name=n, K=np.eye(3), w2c=np.eye(4), width=None, height=None, dist=())  # noqa: E731
        frames, rejected = self._validate(ctx, [(spec(n), job_dir / n, None) for n in photos], 0.0, 0.3 if clips else 1.0)
        refused = {r.file: r.reason for r in rejected}
        skipped.update({n: duplicate_reason(kept, how, refused.get(kept)) for n, (kept, how) in duplicates.items()})
        videos: list[VideoUse] = []
        if clips and len(frames) >= limits.min_images:
            for c in clips:
                skipped[c] = (f"is not used: the folder has {len(frames)} usable photos (limits.min_images = "
                              f"{limits.min_images}), and photos are not mixed with video frames (one camera model "
                              f"for all views). Remove the photos to have the video sampled instead")
        elif clips:
            count = ctx.settings.images.video_frames
            sampled: list[tuple[FrameSpec, Path, str | None]] = []
            fdir = out_dir / FRAMES_DIR
            fdir.mkdir(parents=True, exist_ok=True)
            for k, clip in enumerate(clips):
                span = (0.3 + 0.6 * k / len(clips), 0.3 + 0.6 * (k + 1) / len(clips))
                try:
                    sample = sample_video(job_dir / clip, count,
                                          check=lambda f, s=span: ctx.progress(s[0] + (s[1] - s[0]) * f))
                except VideoUnreadable as e:
                    skipped[clip] = str(e)
                    continue
                for fr in sample.frames:
                    name = f"{clip.replace('/', '_')}_f{fr.index:05d}.jpg"
                    Image.fromarray(fr.rgb).save(fdir / name, quality=95)
                    sampled.append((spec(name), fdir / name, clip))
                videos.append(VideoUse(file=clip, frames=len(sample.frames), decoded=sample.decoded,
                                       duration_s=round(sample.duration_s, 3), fps=round(sample.fps, 3)))
            if videos:
                for fr in frames:
                    skipped[fr.name] = (f"is not used: the job uses frames sampled from {videos[0].file} instead, "
                                        f"because there are fewer than limits.min_images = {limits.min_images} "
                                        f"usable photos and photos are not mixed with video frames")
                frames, more = self._validate(ctx, sampled, 0.9, 1.0)
                rejected += more
        source = PoseSource(kind="sfm", path=job_dir, frames=(), missing=())
        return source, frames, rejected, videos

    @staticmethod
    def _unused(job_dir: Path, source: PoseSource, frames: list[Frame], rejected: list[Rejected],
                videos: list[VideoUse], skipped: dict[str, str]) -> list[Rejected]:
        """Every file of the job folder that is neither used nor already rejected, with the reason."""
        used = {f.name for f in frames if f.source is None} | {f.mask_file for f in frames if f.mask_file}
        used |= {v.file for v in videos} | {SCALE_FILE, READY_MARKER, CANCEL_MARKER, *GT_NAMES}
        if source.kind == "transforms":
            used.add(str(source.path.relative_to(job_dir)))
        elif source.kind == "colmap":
            model = source.path.relative_to(job_dir)
            used |= {str(model / p.name) for p in source.path.iterdir()
                     if p.stem in COLMAP_FILES and p.suffix in (".bin", ".txt")} | {str(model / "project.ini")}
        listed = {r.file for r in rejected}
        pose_name = source.path.name if source.kind == "transforms" else "the COLMAP model"
        root = image_root(job_dir)
        root_name = "images" if root != job_dir else "."
        out = []
        special = special_entries(job_dir)
        for rel in job_files(job_dir):
            if rel in used or rel in listed:
                continue
            # a FIFO or device is named by its kind, never opened (why_unused would read its first bytes)
            reason = special.get(rel) or skipped.get(rel) or why_unused(rel, read_head(job_dir / rel), source.kind, pose_name, root_name)
            out.append(Rejected(rel, reason))
        return out
