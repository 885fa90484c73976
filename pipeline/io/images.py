"""Image validation (by content, not extension) and loading with EXIF orientation applied."""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

from pipeline.io.files import NotRegularFile, open_regular, special_reason
from pipeline.settings import LimitsConfig

try:  # HEIC/HEIF (iPhone photos): Pillow opens them once pillow-heif's opener is registered
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - a declared dependency; kept optional so a broken wheel names itself
    HEIF_SUPPORTED = False

# Magic bytes of the formats we accept; the extension is never trusted.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# ISO base media files start with an 'ftyp' box whose major brand tells HEIF still images from videos
# (and from AVIF, which libheif builds without an AV1 decoder cannot read).
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".heic", ".heif"}
FORMATS_TEXT = "JPEG, PNG, WebP, TIFF or HEIC/HEIF"


def sniff_format(head: bytes) -> str | None:
    """Image format from the first bytes of a file, or None. ``head``: at least 12 bytes."""
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return "HEIF"
    return None


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    format: str
    width: int  # after EXIF orientation
    height: int
    has_alpha: bool
    bytes: int


@dataclass(frozen=True)
class Rejected:
    file: str
    reason: str


def inside(path: Path, root: Path) -> bool:
    """True when ``path`` resolves (following symlinks) to somewhere under ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def validate_image(path: Path, root: Path, limits: LimitsConfig) -> ImageInfo | Rejected:
    """Check one file fully: inside the job folder, size, magic bytes, megapixels, complete decode."""
    rel = os.path.relpath(path, root)
    if not inside(path, root):  # a link (of the file or a folder above it) or an absolute path: never opened
        what = "is a symbolic link pointing" if path.is_symlink() else "is"
        return Rejected(rel, f"{what} outside the job folder; copy the file into the folder instead")
    try:
        st = path.stat()
    except OSError as e:
        return Rejected(rel, f"cannot be read ({e.strerror})")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block the job on open/read: never opened
        return Rejected(rel, special_reason(st.st_mode))
    size = st.st_size
    if size > limits.max_file_mb * 1e6:
        return Rejected(rel, f"is {size / 1e6:.1f} MB, over the {limits.max_file_mb:g} MB per-file limit (limits.max_file_mb)")
    try:
        fh = open_regular(path)
    except NotRegularFile as e:  # swapped for a FIFO since the stat above
        return Rejected(rel, f"is not a regular file ({e}); remove it from the folder")
    except OSError as e:
        return Rejected(rel, f"cannot be read ({e.strerror or e})")
    with fh:
        head = fh.read(16)
        fh.seek(0)
        fmt = sniff_format(head)
        if fmt is None:
            return Rejected(rel, f"is not a {FORMATS_TEXT} image (checked by content, not by name)")
        if fmt == "HEIF" and not HEIF_SUPPORTED:
            return Rejected(rel, "is a HEIC/HEIF photo but pillow-heif is not installed (pip install pillow-heif), "
                                 "or convert it to JPEG")
        max_px = int(limits.max_megapixels * 1e6)
        try:
            with Image.open(fh) as im:
                w, h = im.size
                if w * h > max_px:
                    return Rejected(rel, f"is {w}x{h} = {w * h / 1e6:.1f} MP, over the {limits.max_megapixels:g} MP limit (limits.max_megapixels)")
                im.load()  # full decode: truncated or corrupt files fail here, not later in a stage
                orientation = im.getexif().get(0x0112, 1)
                has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        except Image.DecompressionBombError:
            return Rejected(rel, f"is larger than the decompression-bomb guard allows ({limits.max_megapixels:g} MP)")
        except (OSError, SyntaxError, ValueError) as e:
            return Rejected(rel, f"is a damaged {fmt} file that cannot be decoded ({e})")
    if orientation in (5, 6, 7, 8):  # EXIF rotations by 90 degrees swap width and height
        w, h = h, w
    return ImageInfo(path=path, format=fmt, width=w, height=h, has_alpha=has_alpha, bytes=size)


def load_rgba(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode with EXIF orientation applied. Returns rgb (H, W, 3) uint8 and alpha (H, W) uint8 or None."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        if has_alpha:
            arr = np.asarray(im.convert("RGBA"))
            return np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3])
        if im.mode in ("F", "I"):
            # one-channel float or 32-bit images (scientific and HDR exports): Pillow's conversion clips them to
            # 0..255, so a float image in [0, 1] came out black; scaled by the range its values use instead
            arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            top = float(arr.max()) if arr.size else 0.0
            full = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0 if top <= 65535.0 else top
            gray = np.clip(arr / full * 255.0 + 0.5, 0, 255).astype(np.uint8)
            return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2)), None
        return np.asarray(im.convert("RGB")), None


def upright_jpeg(src: Path, dst: Path, max_side: int, quality: int = 95, turn: bool = False) -> bool:
    """Write ``dst``: the photo ``src`` as structure from motion reads it, upright (COLMAP ignores EXIF), at most
    ``max_side`` px on its long side, as JPEG; with ``turn``, also turned a quarter counter-clockwise (``np.rot90``:
    a portrait photo among landscape ones, so that one camera describes them all). A JPEG that already is all of
    that is copied byte for byte (decoding and encoding one again cost ~15 ms a photo, the photos' quality a second
    time). Returns True when copied."""
    with Image.open(src) as im:  # the header only
        plain = (not turn and im.format == "JPEG" and im.mode == "RGB" and max(im.size) <= max_side
                 and im.getexif().get(0x0112, 1) == 1)
    if plain:
        shutil.copyfile(src, dst)
        return True
    rgb, _alpha = load_rgba(src)
    H, W = rgb.shape[:2]
    s = min(1.0, max_side / max(H, W))
    small = resize(rgb, (max(1, round(W * s)), max(1, round(H * s))))
    if turn:
        small = np.ascontiguousarray(np.rot90(small))
    Image.fromarray(small).save(dst, format="JPEG", quality=quality)
    return False


def lens_of(path: Path) -> tuple[str, ...]:
    """The camera and lens that took a photo, from its EXIF (make, model, focal length in mm to 0.1); () when the
    photo says nothing (PNG renders, video frames, stripped exports). Photos of one lens share their intrinsics."""
    with Image.open(path) as im:  # the header only
        exif = im.getexif()
        focal = exif.get_ifd(0x8769).get(0x920A)  # Exif IFD: FocalLength
    try:
        mm = f"{float(focal):.1f}" if focal else ""
    except (TypeError, ValueError, ZeroDivisionError):  # a malformed tag names no lens
        mm = ""
    ident = (str(exif.get(0x010F, "")).strip("\x00 "), str(exif.get(0x0110, "")).strip("\x00 "), mm)
    return ident if any(ident) else ()


def load_gray(path: Path) -> np.ndarray:
    """A mask file as (H, W) uint8; an alpha channel wins over luminance when present."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA"):
            return np.asarray(im.getchannel("A"))
        return np.asarray(im.convert("L"))


def resize(arr: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize (H, W[, C]) uint8 to ``size`` = (width, height) with Pillow (Lanczos, or nearest)."""
    if arr.shape[1] == size[0] and arr.shape[0] == size[1]:
        return arr
    im = Image.fromarray(arr)
    return np.asarray(im.resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS))


@contextlib.contextmanager
def photo_pool() -> Iterator[ThreadPoolExecutor]:
    """Threads that read photos: decoding and resizing release the GIL, so a few cores help, and more than 8 only
    hold more full-size photos in memory at once. Leaving early (a cancel) drops the photos not yet started."""
    pool = ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="hotmesh-photos")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
