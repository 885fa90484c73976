"""The photos the published cameras describe, copied into the outbox (``images/``), so that nerfstudio, gsplat and
COLMAP open the outbox as it is.

They are the originals, not undistorted: the cameras carry the lens distortion. A JPEG or PNG whose pixels are
stored upright is copied byte for byte; a photo stored rotated (EXIF orientation), a HEIC/WebP/TIFF and the like
are written upright as JPEG (PNG where they have an alpha channel), since the cameras describe the upright image
and the tools do not read EXIF orientation or HEIC. A video's sampled frames are copied from the work folder.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image

from pipeline.io.images import load_rgba

IMAGES_DIR = "images"
COPIED_AS_IS = {".jpg", ".jpeg", ".png"}
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class PhotoOut:
    name: str  # the photo's name in the job (relative to the job folder; a video frame's name)
    path: str  # relative to the outbox: images/<...>
    copied: bool  # byte for byte; False: written upright as JPEG/PNG


def stored_upright(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(EXIF_ORIENTATION, 1) or 1) == 1
    except (OSError, ValueError):
        return False


def outbox_path(name: str, copy: bool, alpha: bool = False) -> str:
    """images/<name without a leading images/>, with a .jpg/.png suffix added where the photo is re-encoded (the
    original name stays recognisable: IMG_1.HEIC -> images/IMG_1.HEIC.jpg)."""
    rel = PurePosixPath(name)
    if rel.parts and rel.parts[0] == IMAGES_DIR:
        rel = PurePosixPath(*rel.parts[1:])
    if not copy:
        suffix = ".png" if alpha else ".jpg"
        if rel.suffix.lower() != suffix:
            rel = rel.with_name(rel.name + suffix)
    return str(PurePosixPath(IMAGES_DIR) / rel)


def export_photos(sources: dict[str, Path], out_dir: Path, write: bool = True) -> list[PhotoOut]:
    """``sources``: photo name -> where its pixels are (the job folder, or the work folder for video frames).
    Writes them under ``out_dir/images`` (unless ``write`` is False: only the names are planned) and returns where
    each went."""
    out: list[PhotoOut] = []
    for name, src in sources.items():
        copy = src.suffix.lower() in COPIED_AS_IS and stored_upright(src)
        if copy:
            rel = outbox_path(name, True)
            if write:
                (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out_dir / rel)
            out.append(PhotoOut(name, rel, True))
            continue
        rgb, alpha = load_rgba(src)  # EXIF orientation applied, HEIC decoded
        rel = outbox_path(name, False, alpha is not None)
        if write:
            dst = out_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if alpha is not None:
                Image.fromarray(np.dstack([rgb, alpha])).save(dst)
            else:
                cv2.imwrite(str(dst), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        out.append(PhotoOut(name, rel, False))
    return out
