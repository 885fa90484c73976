"""report.html: one self-contained file (inline images and SVG, no scripts from the network)."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from PIL import Image

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"


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


def camera_plot(centers: np.ndarray, forwards: np.ndarray, holdout: np.ndarray, up: np.ndarray,
                object_points: np.ndarray | None, size: int = 260) -> list[dict[str, Any]]:
    """Two 2-D projections (top: looking down the up axis; side) as SVG-ready coordinates."""
    u = up / np.linalg.norm(up)
    a = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = np.cross(u, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)
    views = []
    for title, bx, by in (("top (looking down)", e1, e2), ("side", e1, -u)):
        pts = np.stack([centers @ bx, centers @ by], 1)
        tips = np.stack([(centers + forwards * 0.15 * np.ptp(centers, 0).max()) @ bx,
                         (centers + forwards * 0.15 * np.ptp(centers, 0).max()) @ by], 1)
        obj = np.stack([object_points @ bx, object_points @ by], 1) if object_points is not None else np.zeros((0, 2))
        allp = np.vstack([pts, tips, obj])
        lo, hi = allp.min(0), allp.max(0)
        scale = (size - 20) / max(float((hi - lo).max()), 1e-9)

        def tr(p: np.ndarray) -> list[list[float]]:
            q = (p - lo) * scale + 10
            return [[round(float(x), 1), round(float(y), 1)] for x, y in q]

        views.append({"title": title, "size": size, "cams": [
            {"p": p, "t": t, "held": bool(h)} for p, t, h in zip(tr(pts), tr(tips), holdout)],
            "obj": tr(obj)})
    return views


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


STATS_SECTIONS = ("quality", "mesh", "input", "cameras", "geometry", "refine", "texture", "files", "up")


def complete_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """Every section the template reads, None where a job ended before producing it."""
    for key in STATS_SECTIONS:
        stats.setdefault(key, None)
    return stats


def render_report(context: dict[str, Any], path: Path) -> None:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = _fmt
    env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, sort_keys=True)
    html = env.get_template("report.html.j2").render(**context)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
