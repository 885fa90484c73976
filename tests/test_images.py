import os
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.settings import LimitsConfig
from pipeline.io.images import ImageInfo, Rejected, load_rgba, sniff_format, upright_jpeg, validate_image


def _png(path: Path, w: int = 40, h: int = 30, mode: str = "RGB") -> Path:
    Image.new(mode, (w, h), (10, 20, 30) if mode == "RGB" else (10, 20, 30, 128)).save(path, format="PNG")
    return path


def test_sniff_formats(tmp_path: Path) -> None:
    for fmt, name in (("PNG", "a.png"), ("JPEG", "a.jpg"), ("WEBP", "a.webp"), ("TIFF", "a.tif")):
        Image.new("RGB", (8, 8)).save(tmp_path / name, format=fmt)
        assert sniff_format((tmp_path / name).read_bytes()[:16]) == fmt
    assert sniff_format(b"GIF89a..........") is None


def test_content_not_extension(tmp_path: Path) -> None:
    real = tmp_path / "photo.txt"
    Image.new("RGB", (8, 8)).save(real, format="JPEG")
    assert isinstance(validate_image(real, tmp_path, LimitsConfig()), ImageInfo)
    fake = tmp_path / "fake.png"
    fake.write_text("hello")
    r = validate_image(fake, tmp_path, LimitsConfig())
    assert isinstance(r, Rejected) and "not a JPEG, PNG, WebP, TIFF or HEIC/HEIF" in r.reason


def test_truncated_file_fails_full_decode(tmp_path: Path) -> None:
    p = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(p, quality=95)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    r = validate_image(p, tmp_path, LimitsConfig())
    assert isinstance(r, Rejected) and "damaged JPEG" in r.reason


def test_limits(tmp_path: Path) -> None:
    p = _png(tmp_path / "big.png", 2000, 1500)
    r = validate_image(p, tmp_path, LimitsConfig(max_megapixels=1.0))
    assert isinstance(r, Rejected) and "3.0 MP, over the 1 MP limit" in r.reason
    r = validate_image(p, tmp_path, LimitsConfig(max_file_mb=0.000001))
    assert isinstance(r, Rejected) and "per-file limit" in r.reason


def test_symlink_outside_rejected_inside_allowed(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    outside = _png(tmp_path / "secret.png")
    os.symlink(outside, job / "link.png")
    r = validate_image(job / "link.png", job, LimitsConfig())
    assert isinstance(r, Rejected) and "outside the job folder" in r.reason
    _png(job / "real.png")
    os.symlink(job / "real.png", job / "inner.png")
    assert isinstance(validate_image(job / "inner.png", job, LimitsConfig()), ImageInfo)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif)
    info = validate_image(p, tmp_path, LimitsConfig())
    assert isinstance(info, ImageInfo) and (info.width, info.height) == (20, 60)
    rgb, alpha = load_rgba(p)
    assert rgb.shape == (60, 20, 3) and alpha is None


def test_float_and_32_bit_images_are_scaled_by_their_range(tmp_path: Path) -> None:
    """A one-channel float TIFF in [0, 1] (a scientific or HDR export) was read black (Pillow clips to 0..255); it
    and a 32-bit integer image are scaled by the range their values use, and validate and copy like any photo."""
    ramp = np.linspace(0.0, 1.0, 40 * 30).reshape(30, 40)
    for name, arr, full in (("f.tif", ramp.astype(np.float32), 1.0),
                            ("i.tif", (ramp * 65535).astype(np.int32), 65535.0)):
        p = tmp_path / name
        Image.fromarray(arr).save(p)
        assert isinstance(validate_image(p, tmp_path, LimitsConfig()), ImageInfo)
        rgb, alpha = load_rgba(p)
        assert rgb.shape == (30, 40, 3) and alpha is None
        assert np.abs(rgb[..., 1].astype(np.float64) - arr / full * 255).max() <= 1.0
        upright_jpeg(p, tmp_path / (name + ".jpg"), 1000)
        assert 100 < np.asarray(Image.open(tmp_path / (name + ".jpg"))).mean() < 155


def test_alpha_detected(tmp_path: Path) -> None:
    p = _png(tmp_path / "a.png", mode="RGBA")
    info = validate_image(p, tmp_path, LimitsConfig())
    assert isinstance(info, ImageInfo) and info.has_alpha
    rgb, alpha = load_rgba(p)
    assert alpha is not None and int(alpha[0, 0]) == 128


def test_photos_for_sfm_are_upright_jpegs_within_the_size(tmp_path: Path) -> None:
    """SfM's copies: a plain JPEG within the size travels byte for byte; a turned one is written upright, a large one
    smaller, a PNG with alpha as a JPEG of its colours."""
    y, x = np.mgrid[0:30, 0:80]
    # smooth ramps along each axis: a turn shows, and JPEG's own loss stays small
    pixels = np.stack([x * 3, y * 8, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    plain = tmp_path / "plain.jpg"
    Image.fromarray(pixels).save(plain, quality=90)
    assert upright_jpeg(plain, tmp_path / "a.jpg", 80) and (tmp_path / "a.jpg").read_bytes() == plain.read_bytes()
    # the same photo over the size: scaled so that its long side is the size
    assert not upright_jpeg(plain, tmp_path / "b.jpg", 40)
    with Image.open(tmp_path / "b.jpg") as im:
        assert im.format == "JPEG" and im.size == (40, 15)
    # turned by EXIF: the copy holds the pixels as shown, with no orientation left to apply
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[0x0112] = 6
    turned = tmp_path / "turned.jpg"
    im.save(turned, exif=exif, quality=95)
    assert not upright_jpeg(turned, tmp_path / "c.jpg", 1000)
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.size == (30, 80) and im.getexif().get(0x0112, 1) == 1
        shown = np.asarray(im, dtype=np.float32)
    assert np.abs(shown - load_rgba(turned)[0].astype(np.float32)).mean() < 3
    assert np.abs(shown - np.rot90(pixels, -1).astype(np.float32)).mean() < 3
    rgba = _png(tmp_path / "a.png", mode="RGBA")
    assert not upright_jpeg(rgba, tmp_path / "d.jpg", 1000)
    with Image.open(tmp_path / "d.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (40, 30)
