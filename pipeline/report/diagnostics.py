"""Per-photo diagnostics for reports of failed jobs: a thumbnail, sharpness, exposure and, where structure from motion
ran, its features, matches and whether the photo was placed.

Kept free of torch/trimesh imports (PIL and numpy only) so the daemon can use it cheaply.
"""
from __future__ import annotations

import base64
import io
import json
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from pipeline.io.files import kind_of, open_regular, regular_file
from pipeline.io.images import inside
from pipeline.settings import LimitsConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff")
MEASURE_SIDE = 512  # sharpness and exposure are measured at this long side, so photos of any size compare
SFM_PER_IMAGE = "per_image.json"  # pipeline.cameras.sfm.PER_IMAGE_FILE (not imported: that module needs pycolmap)


def sharpness(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a (H, W) grey image in [0, 255] (higher: sharper). The usual blur
    measure; comparable between photos of one set measured at the same size."""
    if gray.ndim != 2 or min(gray.shape) < 3:
        raise ValueError(f"gray must be (H, W) with H, W >= 3, got {gray.shape}")
    g = gray.astype(np.float64)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def exposure(gray: np.ndarray) -> tuple[float, float, float]:
    """(mean level 0-255, share of pixels crushed to black (<= 5), share blown to white (>= 250)) of the uint8
    grey levels ``gray``: an (H, W) image or the (P,) pixels of its object."""
    if gray.ndim not in (1, 2) or gray.size == 0:
        raise ValueError(f"gray must be a non-empty (H, W) or (P,) array, got {gray.shape}")
    return float(gray.mean()), float((gray <= 5).mean()), float((gray >= 250).mean())


@dataclass(frozen=True)
class PhotoDiag:
    name: str
    thumb: str | None = None  # data: URI, for the page only (not in stats.json)
    width: int | None = None
    height: int | None = None
    sharpness: float | None = None
    mean: float | None = None
    dark: float | None = None
    bright: float | None = None
    features: int | None = None
    matched_images: int | None = None
    matches: int | None = None
    registered: bool | None = None
    points: int | None = None
    flags: tuple[str, ...] = field(default=())
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("thumb")
        d["flags"] = list(self.flags)
        return d


def list_photos(input_dir: Path) -> list[str]:
    """Image files of a job folder (images/ when there is one, else the top level), sorted, relative names. By
    lstat only: a linked images/ folder or job folder is not listed, special files are left out, and linked
    files are listed for :func:`refusal` to judge (ingest refuses links that leave the folder; a report must never
    open what ingest refused)."""
    if input_dir.is_symlink():
        return []
    images = input_dir / "images"
    root = images if regular_dir(images) else input_dir
    if root is images and images.is_symlink():
        return []
    try:
        return sorted(str(p.relative_to(input_dir)) for p in root.iterdir()
                      if (regular_file(p, follow=False) or p.is_symlink()) and p.suffix.lower() in IMAGE_SUFFIXES
                      and not p.name.startswith("."))
    except OSError:
        return []


def regular_dir(p: Path) -> bool:
    """A directory that is not a symbolic link (lstat)."""
    try:
        return stat.S_ISDIR(p.lstat().st_mode)
    except OSError:
        return False


def refusal(path: Path, input_dir: Path, limits: LimitsConfig | None) -> str | None:
    """Why a photo must not be opened for the report, or None: a link (or a folder link above it) that leaves the
    job folder, a FIFO or device, or a file ingest refuses for its size (decoding it only for a thumbnail would
    cost what the limit is there to avoid). Stats and an image header only: nothing is decoded."""
    if input_dir.is_symlink() or not inside(path, input_dir):
        return "not shown: it is outside the job folder (a symbolic link), and such files are never opened"
    try:
        st = path.stat()
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        return f"not shown: it is {kind_of(st.st_mode)}, not a regular file"
    if limits is None:
        return None
    if st.st_size > limits.max_file_mb * 1e6:
        return f"not shown: {st.st_size / 1e6:.1f} MB is over the {limits.max_file_mb:g} MB per-file limit"
    try:
        with open_regular(path) as fh, Image.open(fh) as im:  # the header only
            w, h = im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None  # measure_photo says it cannot be read
    if w * h > limits.max_megapixels * 1e6:
        return f"not shown: {w}x{h} = {w * h / 1e6:.1f} MP is over the {limits.max_megapixels:g} MP limit"
    return None


def read_sfm_rows(work_dir: Path) -> dict[str, dict[str, Any]]:
    """Structure from motion's per-image counts of a job (pipeline.cameras.sfm.image_counts), from the finished cameras stage
    or the one that failed (its .tmp folder is kept), keyed by the photo's name ('.jpg' of the SfM copy removed)."""
    for sub in ("cameras", "cameras.tmp"):
        path = work_dir / "stages" / sub / "sfm" / SFM_PER_IMAGE
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        return {str(r["name"]).removesuffix(".jpg"): r for r in rows if isinstance(r, dict) and "name" in r}
    return {}


def _thumb(im: Image.Image, side: int) -> str:
    t = im.copy()
    t.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    t.convert("RGB").save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def measure_photo(path: Path, name: str, thumb_side: int = 160) -> PhotoDiag:
    """Thumbnail, size, sharpness and exposure of one photo; a diagnostic with ``error`` when it cannot be read."""
    try:
        with open_regular(path) as fh, Image.open(fh) as im:
            width, height = im.size
            im.draft("RGB", (MEASURE_SIDE, MEASURE_SIDE))  # JPEG: decode at a reduced scale, much faster
            im = ImageOps.exif_transpose(im)
            im.thumbnail((MEASURE_SIDE, MEASURE_SIDE), Image.Resampling.BILINEAR)
            alpha = np.asarray(im.getchannel("A")) > 127 if "A" in im.getbands() else None
            if alpha is not None:  # a cut-out photo: shown on white, exposure measured on the object only
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
            im = im.convert("RGB")
            gray = np.asarray(im.convert("L"))
            mean, dark, bright = exposure(gray[alpha] if alpha is not None and alpha.any() else gray)
            return PhotoDiag(name=name, thumb=_thumb(im, thumb_side), width=width, height=height,
                             sharpness=sharpness(gray), mean=mean, dark=dark, bright=bright)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return PhotoDiag(name=name, error=f"cannot be read: {e}")


def flag_photos(diags: list[PhotoDiag]) -> list[PhotoDiag]:
    """Adds plain flags to each photo: compared with the set's median for sharpness and features (what is normal
    depends on the scene), absolute for exposure."""
    def median(values: list[float]) -> float | None:
        return float(np.median(values)) if values else None

    med_sharp = median([d.sharpness for d in diags if d.sharpness is not None])
    med_feat = median([float(d.features) for d in diags if d.features is not None])
    out = []
    for d in diags:
        flags = []
        if d.error and not d.error.startswith("not shown"):
            flags.append("unreadable")
        if d.sharpness is not None and med_sharp and d.sharpness < 0.35 * med_sharp:
            flags.append("much softer than the others (blur?)")
        if d.mean is not None and d.mean < 40:
            flags.append("dark")
        if d.mean is not None and d.mean > 215:
            flags.append("bright")
        if d.bright is not None and d.bright > 0.05:
            flags.append(f"{d.bright:.0%} blown to white")
        if d.dark is not None and d.dark > 0.2:
            flags.append(f"{d.dark:.0%} crushed to black")
        if d.features is not None and (d.features < 300 or (med_feat and d.features < 0.3 * med_feat)):
            flags.append("few features (plain or blurred surface)")
        if d.matched_images == 0:
            flags.append("matches no other photo")
        if d.registered is False:
            flags.append("not placed")
        out.append(PhotoDiag(**{**asdict(d), "flags": tuple(flags)}))
    return out


def photo_diagnostics(input_dir: Path, work_dir: Path, names: list[str] | None = None,
                      max_photos: int = 150, limits: LimitsConfig | None = None) -> list[PhotoDiag]:
    """Diagnostics for the job's photos (``names`` relative to ``input_dir``, else every image found), at most
    ``max_photos`` (spread evenly over the set), merged with structure from motion's counts when it ran. A photo
    that must not be opened (see :func:`refusal`; ``limits``: the job's, for the size limits) is listed with the
    reason and no thumbnail."""
    names = list(names) if names is not None else list_photos(input_dir)
    if len(names) > max_photos:
        names = [names[i] for i in np.linspace(0, len(names) - 1, max_photos).round().astype(int)]
    sfm = read_sfm_rows(work_dir)
    diags = []
    for n in names:
        why = refusal(input_dir / n, input_dir, limits)
        d = PhotoDiag(name=n, error=why) if why else measure_photo(input_dir / n, n)
        r = sfm.get(n)
        if r is not None:
            d = PhotoDiag(**{**asdict(d), "features": r.get("features"), "matched_images": r.get("matched_images"),
                             "matches": r.get("matches"), "registered": r.get("registered"),
                             "points": r.get("points")})
        diags.append(d)
    return flag_photos(diags)
