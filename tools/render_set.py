"""Render a posed, masked evaluation set (RGBA PNG + transforms.json + gt.ply) from a (textured) mesh.

    python tools/render_set.py MESH OUT_DIR [--views 60] [--size 512] [--seed 0] [--zup]

Cameras: random directions on a sphere (by default its upper 80%, like a turntable shoot with some low views;
``--min-z -1`` for the whole sphere), looking at
the object's centre, at a distance where the object fills about 60% of the frame. Shading is view-independent
(albedo x fixed world light), so a photometric method can reproduce the images exactly. Output follows the
NeRF-synthetic convention (OpenGL camera axes, camera_angle_x); gt.ply is in the same world frame.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.render import look_at, pixel_rays  # noqa: E402

_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


def load_mesh(path: Path) -> trimesh.Trimesh:
    scene_or_mesh = trimesh.load(path)
    if isinstance(scene_or_mesh, trimesh.Scene):
        return scene_or_mesh.to_mesh() if hasattr(scene_or_mesh, "to_mesh") else scene_or_mesh.dump(concatenate=True)
    return scene_or_mesh


def albedo_at(mesh: trimesh.Trimesh, tri: np.ndarray, locs: np.ndarray) -> np.ndarray:
    """Base colour (R, 3) in [0, 1] at hit points: texture through UVs, else vertex/face colour, else grey."""
    vis = mesh.visual
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], locs)
    if isinstance(vis, trimesh.visual.TextureVisuals) and vis.uv is not None:
        uv = np.einsum("rk,rkc->rc", bary, vis.uv[mesh.faces[tri]])
        img = None
        mat = vis.material
        img = getattr(mat, "image", None) or getattr(mat, "baseColorTexture", None)
        if img is not None:
            tex = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
            h, w = tex.shape[:2]
            x = np.clip((uv[:, 0] % 1.0) * (w - 1), 0, w - 1).astype(int)
            y = np.clip((1 - uv[:, 1] % 1.0) * (h - 1), 0, h - 1).astype(int)
            col = tex[y, x]
            factor = getattr(mat, "baseColorFactor", None)
            if factor is not None:
                col = col * (np.asarray(factor[:3], dtype=np.float32) / 255.0 if np.max(factor) > 1 else np.asarray(factor[:3]))
            return col
        color = getattr(mat, "main_color", None)
        if color is not None:
            return np.tile(np.asarray(color[:3], dtype=np.float32) / 255.0, (len(tri), 1))
    if isinstance(vis, trimesh.visual.ColorVisuals) and vis.kind == "vertex":
        vc = vis.vertex_colors[:, :3].astype(np.float32) / 255.0
        return np.einsum("rk,rkc->rc", bary, vc[mesh.faces[tri]])
    return np.full((len(tri), 3), 0.7, dtype=np.float32)


_JOB: tuple = ()


def _render_view(item: tuple[int, np.ndarray]) -> None:
    i, w2c = item
    mesh, K, S, light, out = _JOB
    origin, dirs = pixel_rays(K, w2c, S, S)
    locs, ray_idx, tri_idx = mesh.ray.intersects_location(np.broadcast_to(origin, dirs.shape), dirs, multiple_hits=False)
    rgba = np.zeros((S * S, 4), dtype=np.float32)
    if len(ray_idx):
        alb = albedo_at(mesh, tri_idx, locs)
        bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri_idx], locs)
        n = np.einsum("rk,rkc->rc", bary, mesh.vertex_normals[mesh.faces[tri_idx]])
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
        shade = 0.35 + 0.65 * np.clip(np.abs(n @ light), 0, 1)
        rgba[ray_idx, :3] = np.clip(alb * shade[:, None], 0, 1)
        rgba[ray_idx, 3] = 1.0
    Image.fromarray((rgba.reshape(S, S, 4) * 255).astype(np.uint8)).save(out / "images" / f"r_{i:03d}.png", optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mesh", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--views", type=int, default=60)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fov", type=float, default=0.6911, help="camera_angle_x in radians")
    ap.add_argument("--zup", action="store_true", help="rotate a +Y-up (glTF) mesh to +Z up first, as NeRF scenes are")
    ap.add_argument("--min-z", type=float, default=-0.6,
                    help="lowest camera direction z (unit sphere, +Z up): -0.6 keeps the upper 80%%, -1 the whole sphere")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the mesh's units (tests scale invariance)")
    args = ap.parse_args()

    mesh = load_mesh(args.mesh)
    if args.zup:
        mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    if args.scale != 1.0:
        mesh.apply_scale(args.scale)
    up = np.array([0.0, 0.0, 1.0])
    center = mesh.bounds.mean(axis=0)
    radius = float(np.linalg.norm(mesh.vertices - center, axis=1).max())
    dist = radius / np.tan(args.fov / 2) / 0.8
    rng = np.random.default_rng(args.seed)
    out = args.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    S = args.size
    f = 0.5 * S / np.tan(0.5 * args.fov)
    K = np.array([[f, 0, S / 2], [0, f, S / 2], [0, 0, 1.0]])
    light = np.array([0.3, -0.5, 0.8])
    light /= np.linalg.norm(light)
    poses = []
    for i in range(args.views):
        while True:
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            if d[2] > args.min_z:
                break
        poses.append(look_at(center + dist * d, center, up))
    global _JOB
    _JOB = (mesh, K, S, light, out)
    import multiprocessing as mp

    with mp.get_context("fork").Pool(args.workers) as pool:
        pool.map(_render_view, list(enumerate(poses)))
    frames = [{"file_path": f"images/r_{i:03d}.png", "transform_matrix": (np.linalg.inv(w2c) @ _CV_TO_GL).tolist()}
              for i, w2c in enumerate(poses)]
    (out / "transforms.json").write_text(json.dumps({"camera_angle_x": args.fov, "frames": frames}, indent=1))
    gt = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
    gt.export(out / "gt.ply")
    print(f"wrote {args.views} views of {args.mesh.name} at {S}x{S} to {out}")


if __name__ == "__main__":
    main()
