"""Small photo-like test scenes rendered with pipeline.imaging.render: an object standing on a textured table, optionally
with a textured wall right behind it, seen by posed cameras that include close-ups cut by the image border and one
camera inside the object's bounding sphere. Fast enough for CI (a second or two for 20 small views)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from pipeline.imaging.render import look_at, render


@dataclass(frozen=True)
class SceneSpec:
    views: int = 16  # the ring around the front of the object
    size: tuple[int, int] = (240, 180)
    wall: bool = True  # a wall right behind the object
    close_ups: int = 2  # views so close that the object is cut by the border
    inside: bool = True  # one camera inside the object's bounding sphere
    seed: int = 0


def _noise_colors(points: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Blotchy per-vertex colours from a few random sinusoids: texture that stereo can match. (P, 3) -> (P, 3)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(points), 3))
    for _ in range(12):
        k = rng.normal(size=3) / scale * rng.uniform(0.5, 3.0)
        out += rng.uniform(0.3, 1.0, size=3)[None] * np.sin(points @ k + rng.uniform(0, 2 * np.pi))[:, None]
    out = (out - out.min(0)) / (np.ptp(out, axis=0) + 1e-9)
    return np.clip(0.1 + 0.8 * out, 0, 1)


def _slab(extents: tuple[float, float, float], center: tuple[float, float, float], target_edge: float) -> trimesh.Trimesh:
    box = trimesh.creation.box(extents=extents)
    box.apply_translation(center)
    v, f = trimesh.remesh.subdivide_to_size(box.vertices, box.faces, max_edge=target_edge)
    return trimesh.Trimesh(v, f, process=False)


def object_mesh() -> trimesh.Trimesh:
    """A two-lobed object (a body and a head on a neck) standing on z = 0, about 1 unit tall."""
    body = trimesh.creation.capsule(height=0.6, radius=0.3, count=[24, 24])
    body.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    body.apply_translation([0, 0, 0.3])
    head = trimesh.creation.icosphere(subdivisions=3, radius=0.22)
    head.apply_translation([0.45, 0, 0.75])
    neck = trimesh.creation.cylinder(radius=0.1, height=0.4)
    neck.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 5, [0, 1, 0]))
    neck.apply_translation([0.35, 0, 0.55])
    mesh = trimesh.util.concatenate([body, head, neck])
    v, f = trimesh.remesh.subdivide_to_size(mesh.vertices, mesh.faces, max_edge=0.03)
    return trimesh.Trimesh(v, f, process=True)


def render_scene(out: Path, spec: SceneSpec = SceneSpec()) -> Path:
    """Writes out/images/*.png, out/transforms.json (NeRF convention) and out/gt.ply; returns ``out``."""
    obj = object_mesh()
    parts = [obj, _slab((4.0, 4.0, 0.1), (0, 0, -0.05), 0.05)]
    if spec.wall:
        ymin = float(obj.bounds[0][1])
        parts.append(_slab((4.0, 0.1, 2.5), (0, ymin - 0.08, 1.2), 0.05))  # 3 cm behind the object
    scene = trimesh.util.concatenate(parts)
    # each part its own pattern and palette, fine enough to match at this size
    colors = np.concatenate([_noise_colors(np.asarray(p.vertices), 0.06, spec.seed + k) * (0.6 + 0.4 * (k == 0))
                             for k, p in enumerate(parts)])
    W, H = spec.size
    f = 0.9 * W
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    target = np.array([0.15, 0, 0.45])
    eyes = []
    for a in np.linspace(np.radians(15), np.radians(165), spec.views):  # in front of the wall (y > 0)
        el = np.radians(20 + 15 * (len(eyes) % 2))
        eyes.append((target + 2.6 * np.array([np.cos(a) * np.cos(el), np.sin(a) * np.cos(el), np.sin(el)]), target))
    for a in np.linspace(np.radians(60), np.radians(120), spec.close_ups):
        eyes.append((target + 0.9 * np.array([np.cos(a), np.sin(a), 0.4]), target))
    if spec.inside:
        head = np.array([0.45, 0, 0.75])
        eyes.append((head + np.array([0.0, 0.45, 0.1]), head))  # inside the sphere around the whole object
    (out / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for i, (eye, at) in enumerate(eyes):
        w2c = look_at(eye, at, np.array([0, 0, 1.0]))
        r = render(scene, K, w2c, W, H, colors=colors)
        img = np.where(r.mask[..., None], r.rgb * (0.55 + 0.45 * np.abs(r.normal[..., 2:3])), 0.5)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(out / "images" / f"v{i:02d}.png")
        c2w = np.linalg.inv(w2c) @ np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV -> OpenGL camera axes
        frames.append({"file_path": f"images/v{i:02d}.png", "transform_matrix": c2w.tolist()})
    (out / "transforms.json").write_text(json.dumps({"fl_x": f, "fl_y": f, "cx": W / 2, "cy": H / 2, "w": W, "h": H,
                                                      "frames": frames}))
    obj.export(out / "gt.ply")
    return out


def mixed_capture_job(tmp: Path, device: str) -> dict:
    """An unposed job on a capture of three shapes, run as the daemon runs it: every third photo portrait (a phone
    turned now and then), every third from the second on 16:9 (the same camera's wide mode: the middle 180 of 240
    rows), the rest 4:3 landscape. Checks what must hold on every device (every photo registered; the portrait ones
    read turned to share the landscape ones' camera, the wide ones with a camera of their own; each published
    camera with its own photo's size, in transforms.json and the COLMAP model; cameras where the true ones are) and
    returns the mesh's scores against the object (``bench.scoring.score``) with the job's ``stats.json`` under
    ``"stats"``."""
    from bench.scoring import alignment, moved, read_nerf_cameras, score
    from daemon.config import build_settings
    from daemon.intake import fingerprint, snapshot
    from daemon.ledger import Ledger
    from daemon.worker import Paths, execute

    scene = render_scene(tmp / "inbox" / "mix", SceneSpec(size=(320, 240), wall=False, inside=False))
    (scene / "transforms.json").rename(tmp / "truth.json")
    (scene / "gt.ply").rename(tmp / "gt.ply")
    photos = sorted((scene / "images").glob("*.png"))
    size_of = dict.fromkeys((f"images/{p.name}" for p in photos), (320, 240))
    for p in photos[1::3]:
        Image.fromarray(np.rot90(np.asarray(Image.open(p)))).save(p)
        size_of[f"images/{p.name}"] = (240, 320)
    for p in photos[2::3]:
        Image.fromarray(np.asarray(Image.open(p))[30:210]).save(p)
        size_of[f"images/{p.name}"] = (320, 180)
    paths = Paths(scene.parent, tmp / "outbox", tmp / "state")
    ledger = Ledger(paths.ledger)
    ledger.create_job("mix", fingerprint(snapshot(scene)))
    job = ledger.claim_next("test")
    # the texture and the report's renders are not under test: on the CPU a small page of few charts
    settings = build_settings({"report": {"gt_samples": 50_000, "render_size": 128},
                               "texture": {"cpu_size": 256, "cpu_max_faces": 5000}})
    state = execute(ledger, paths, job, settings, device)
    assert state == "done", ledger.get("mix").error
    out = paths.outbox / "mix"
    stats = json.loads((out / "stats.json").read_text())
    sfm = stats["cameras"]["sfm"]
    assert sfm["registered"] == len(photos), sfm
    assert set(sfm["turned"]) == {n for n, wh in size_of.items() if wh == (240, 320)}, sfm
    assert sfm["cameras"] == 2, sfm  # 4:3 (portrait ones turned) and 16:9
    html = (out / "report.html").read_text()
    assert "cameras: 2 (one per photo size and lens); 6 photo(s) of the other orientation read turned" in html
    frames = json.loads((out / "transforms.json").read_text())["frames"]
    assert len(frames) == len(photos)
    for f in frames:
        assert (f["w"], f["h"]) == next(wh for n, wh in size_of.items() if f["file_path"].endswith(Path(n).name)), f
    # the COLMAP model too: one camera per shape, each photo with its own
    assert stats["exports"]["colmap"]["writer"].startswith("hotmesh (photos of several sizes")
    cams = [ln.split() for ln in (out / "sparse" / "0" / "cameras.txt").read_text().splitlines() if ln[:1].isdigit()]
    assert sorted((int(c[2]), int(c[3])) for c in cams) == sorted(set(size_of.values()))
    truth = read_nerf_cameras(tmp / "truth.json")
    al = alignment(read_nerf_cameras(out / "transforms.json"), truth)
    assert al.residual < 0.01 and not al.misplaced
    got = score(moved(trimesh.load(out / "mesh.ply", force="mesh"), al.sim), trimesh.load(tmp / "gt.ply"), truth,
                100_000)
    return {**got, "stats": stats}
