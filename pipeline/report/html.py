"""report.html: one self-contained file (inline images and SVG, no scripts from the network)."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import jinja2
import numpy as np
from PIL import Image

from pipeline.cameras.cameras import camera_centers

# installed: pipeline/templates (package data); in a checkout: templates/ beside the packages
_PACKAGED = Path(__file__).resolve().parents[1] / "templates"
TEMPLATE_DIR = _PACKAGED if (_PACKAGED / "report.html.j2").is_file() else Path(__file__).resolve().parents[2] / "templates"


def data_uri(img: np.ndarray, fmt: str = "JPEG", max_side: int = 512) -> str:
    """(H, W, 3|4) uint8 -> data: URI, downscaled to ``max_side``."""
    im = Image.fromarray(img)
    if max(im.size) > max_side:
        s = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.convert("RGB").save(buf, format="JPEG", quality=85)
        mime = "image/jpeg"
    else:
        im.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def hatch(img: np.ndarray, where: np.ndarray, period: int = 8, width: int = 3) -> np.ndarray:
    """Marks the pixels ``where`` (H, W) bool of ``img`` (H, W, 3) uint8 as unseen: washed out to grey with dark
    diagonal stripes, so a surface no photo saw is not mistaken for a measured one. Returns a new uint8 image."""
    if img.ndim != 3 or img.shape[2] != 3 or where.shape != img.shape[:2]:
        raise ValueError(f"img must be (H, W, 3) and where (H, W), got {img.shape} and {where.shape}")
    if period < 2 or not 0 < width < period:
        raise ValueError(f"need period >= 2 and 0 < width < period, got {period}, {width}")
    out = img.astype(np.float32)
    grey = out.mean(-1, keepdims=True)
    washed = 0.35 * out + 0.65 * (0.5 * grey + 0.5 * 200.0)
    ys, xs = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    stripe = ((xs + ys) % period) < width
    washed = np.where(stripe[..., None], washed * 0.45, washed)
    out = np.where(where[..., None], washed, out)
    return np.clip(out, 0, 255).round().astype(np.uint8)


def camera_scene(Ks: np.ndarray, w2cs: np.ndarray, sizes: list[tuple[int, int]], names: list[str],
                 holdout: np.ndarray, up: np.ndarray, points: np.ndarray, seen: np.ndarray,
                 notes: list[str] | None = None) -> dict[str, Any]:
    """Data for the report's interactive camera plot: every photo's frustum and the mesh as points, seen or not.

    Ks (N, 3, 3), w2cs (N, 4, 4) OpenCV, sizes N (width, height) px, holdout (N,) bool; points (P, 3) a subsample of
    the mesh's vertices with seen (P,) bool (>= the coverage minimum of photos). Everything is moved to the object's
    centre and scaled to a unit radius; ``frustum`` holds 4 image corners at 0.15 of that radius per camera.

    Why a plot drawn by the page's own small script (canvas), not frustums added to the GLB shown in <model-viewer>:
    it draws without WebGL and without the viewer bundle (failure reports and pages whose viewer cannot load keep
    it); model-viewer frames the whole scene, so far-away frustums would shrink the model; glTF lines have no width;
    and a hover names each photo, which a GLB node cannot do."""
    if len(Ks) != len(w2cs) or len(sizes) != len(w2cs) or len(names) != len(w2cs) or len(holdout) != len(w2cs):
        raise ValueError("Ks, w2cs, sizes, names and holdout must have one entry per camera")
    if points.ndim != 2 or points.shape[1] != 3 or seen.shape != (len(points),):
        raise ValueError(f"points must be (P, 3) and seen (P,), got {points.shape} and {seen.shape}")
    centres = camera_centers(w2cs)
    target = points.mean(0) if len(points) else centres.mean(0)
    radius = float(np.linalg.norm(np.vstack([centres, points]) - target, axis=1).max()) or 1.0
    depth = 0.15 * radius
    cams = []
    for i, (K, w2c, (w, h)) in enumerate(zip(Ks, w2cs, sizes)):
        R = w2c[:3, :3]
        corners = []
        for x, y in ((0, 0), (w, 0), (w, h), (0, h)):
            ray = np.array([(x - K[0, 2]) / K[0, 0], (y - K[1, 2]) / K[1, 1], 1.0])
            corners.append(centres[i] + depth * (R.T @ ray))
        cams.append({"name": names[i], "held": bool(holdout[i]), "note": notes[i] if notes else "",
                     "c": _r((centres[i] - target) / radius), "f": [_r((p - target) / radius) for p in corners]})
    return {"up": _r(np.asarray(up, dtype=np.float64) / np.linalg.norm(up)), "cams": cams,
            "pts": [_r((p - target) / radius, 3) for p in points], "seen": [int(bool(s)) for s in seen]}


def _r(v: np.ndarray, digits: int = 4) -> list[float]:
    return [round(float(x), digits) for x in v]


def config_rows(config: dict[str, dict[str, Any]], defaults: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The settings as one compact table: [{section, key, value, default, changed}], changed ones first. Keys with
    secret-sounding names are masked (pipeline.io.redact), though the pipeline's settings hold none."""
    from pipeline.io.redact import redact_mapping

    safe = redact_mapping(config)
    rows = []
    for section, values in safe.items():
        for key, value in (values or {}).items():
            default = (defaults.get(section) or {}).get(key)
            rows.append({"section": section, "key": key, "value": value, "default": default,
                         "changed": section in defaults and value != default})
    return sorted(rows, key=lambda r: not r["changed"])


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not np.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.{digits}f}"
    return str(value)


def human(value: Any) -> str:
    """A number as people read it: no trailing zeros past what it means (698, 12.3, 0.412), thousands grouped."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    v = float(value)
    if not np.isfinite(v):
        return str(v)
    if isinstance(value, (int, np.integer)) or abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def filesize(n: Any) -> str:
    """Bytes as B, kB, MB or GB (powers of 1000, as file managers show them)."""
    if n is None:
        return "n/a"
    n = float(n)
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{human(n / size)} {unit}"
    return f"{n:.0f} B"


@dataclass(frozen=True)
class Units:
    """How the report writes lengths: ``name`` (mm, cm, m, or "units" when the scale is arbitrary) and ``factor``
    (display value per world unit)."""

    name: str
    factor: float

    @property
    def real(self) -> bool:
        return self.name != "units"

    def length(self, v: float | None) -> str:
        return "n/a" if v is None else f"{human(v * self.factor)} {self.name}"

    def area(self, v: float | None) -> str:
        return "n/a" if v is None else f"{human(v * self.factor ** 2)} {self.name}²"

    def volume(self, v: float | None) -> str:
        if v is None:
            return "n/a"
        if self.real:  # volumes read best in millilitres / litres
            ml = v * (self.factor / {"mm": 1000.0, "cm": 100.0, "m": 1.0}[self.name]) ** 3 * 1e6
            return f"{human(ml)} ml" if round(ml) < 1000 else f"{human(ml / 1000)} l"
        return f"{human(v)} {self.name}³"


def display_units(scale: dict[str, Any] | None, diagonal: float | None) -> Units:
    """mm, cm or m by the object's size when the job has a real scale (scale.json applied, or metres per unit
    known), else the scene's own units."""
    mpu = (scale or {}).get("metres_per_unit")
    if not mpu:
        return Units("units", 1.0)
    metres = float(mpu) * float(diagonal or 0.0)
    if metres < 0.1:
        return Units("mm", float(mpu) * 1000.0)
    if metres < 3.0:
        return Units("cm", float(mpu) * 100.0)
    return Units("m", float(mpu))


STATS_SECTIONS = ("quality", "mesh", "input", "cameras", "geometry", "refine", "texture", "files", "up")


def complete_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """Every section the template reads, None where a job ended before producing it."""
    for key in STATS_SECTIONS:
        stats.setdefault(key, None)
    return stats


# the smallest card the default settings are checked on: a 48-photo job at 960x720 peaked at 2.0 GB of torch memory
# on an H200 with torch capped to 24 GiB (docs/benchmarks.md)
MIN_GPU_GB = 24


def render_report(context: dict[str, Any], path: Path) -> None:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = _fmt
    env.filters["human"] = human
    env.filters["filesize"] = filesize
    stats = context.get("stats") or {}
    context = dict(context, units=display_units(stats.get("scale"), (stats.get("mesh") or {}).get("diagonal")),
                   min_gpu_gb=MIN_GPU_GB)
    env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, sort_keys=True)
    env.filters["pct"] = lambda v, digits=0: "n/a" if v is None else f"{100 * v:.{digits}f}%"
    html = env.get_template("report.html.j2").render(**context)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
