"""CPU ray-cast renderer (trimesh + Embree) for report renders, held-out views and visibility.

Rasterisation on the CPU through pytorch3d is O(pixels x faces) and takes minutes for a 200k-face mesh;
Embree's BVH ray casting renders the same view in well under a second on two cores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from pipeline.cameras.cameras import scale_intrinsics
from pipeline.imaging.sampling import sample_texture


@dataclass(frozen=True)
class RenderOut:
    mask: np.ndarray  # (H, W) bool, pixel covered by the mesh
    depth: np.ndarray  # (H, W) float32, camera-space z (inf where empty)
    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1], interpolated vertex colours (0 where empty)
    normal: np.ndarray  # (H, W, 3) float32, world-space face normals (0 where empty)


def pixel_rays(K: np.ndarray, w2c: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Rays through pixel centres. Returns origin (3,) and unit directions (H*W, 3), world frame."""
    R, t = w2c[:3, :3], w2c[:3, 3]
    origin = -R.T @ t
    # world direction of pixel (x, y): R^T K^-1 (x, y, 1) = A[:, 0] x + A[:, 1] y + A[:, 2], with A = R^T K^-1.
    # Written as broadcast sums rather than an (H*W, 3) @ (3, 3) product: BLAS threads on such thin products cost
    # more than the arithmetic (over 0.1 s per 384² render on a busy 2-core machine; the report makes dozens)
    A = R.T @ np.linalg.inv(K)
    xs = np.arange(width, dtype=np.float64) + 0.5
    ys = np.arange(height, dtype=np.float64) + 0.5
    d_world = np.empty((height, width, 3))
    for c in range(3):
        d_world[..., c] = ys[:, None] * A[c, 1] + (xs[None, :] * A[c, 0] + A[c, 2])
    d_world = d_world.reshape(-1, 3)
    d_world /= np.sqrt(np.einsum("ij,ij->i", d_world, d_world))[:, None]
    return origin, d_world


def reduced_camera(K: np.ndarray, width: int, height: int, max_side: int) -> tuple[np.ndarray, int, int]:
    """K (3, 3) and size of the same camera rendered at most ``max_side`` px on its long side (never upscaled)."""
    s = min(1.0, max_side / max(width, height))
    w, h = max(8, round(width * s)), max(8, round(height * s))
    return scale_intrinsics(np.asarray(K, dtype=np.float64), w / width, h / height), w, h


def render(mesh: trimesh.Trimesh, K: np.ndarray, w2c: np.ndarray, width: int, height: int,
           colors: np.ndarray | None = None, uv: np.ndarray | None = None,
           texture: np.ndarray | None = None) -> RenderOut:
    """Render ``mesh`` into a pinhole camera (K (3, 3), w2c (4, 4) OpenCV) of ``width`` x ``height``.

    Colour from per-vertex ``colors`` (V, 3) in [0, 1], or from ``uv`` (V, 2, v up) + ``texture`` (S, S, 3) uint8."""
    if K.shape != (3, 3) or w2c.shape != (4, 4):
        raise ValueError(f"K must be (3, 3) and w2c (4, 4), got {K.shape} and {w2c.shape}")
    origin, dirs = pixel_rays(K, w2c, width, height)
    origins = np.broadcast_to(origin, dirs.shape)
    locs, ray_idx, tri_idx = mesh.ray.intersects_location(origins, dirs, multiple_hits=False)
    n = width * height
    mask = np.zeros(n, dtype=bool)
    depth = np.full(n, np.inf, dtype=np.float32)
    rgb = np.zeros((n, 3), dtype=np.float32)
    normal = np.zeros((n, 3), dtype=np.float32)
    if len(ray_idx):
        mask[ray_idx] = True
        # camera-space z, as broadcast sums for the reason given in pixel_rays
        depth[ray_idx] = locs[:, 0] * w2c[2, 0] + locs[:, 1] * w2c[2, 1] + locs[:, 2] * w2c[2, 2] + w2c[2, 3]
        normal[ray_idx] = mesh.face_normals[tri_idx]
        if colors is not None or (uv is not None and texture is not None):
            tris = mesh.triangles[tri_idx]
            bary = trimesh.triangles.points_to_barycentric(tris, locs)
            if uv is not None and texture is not None:
                tc = np.einsum("rk,rkc->rc", bary, uv[mesh.faces[tri_idx]])
                rgb[ray_idx] = np.clip(sample_texture(texture.astype(np.float32) / 255.0, tc), 0, 1)
            else:
                fc = colors[mesh.faces[tri_idx]]  # (R, 3 verts, 3 channels)
                rgb[ray_idx] = np.clip(np.einsum("rk,rkc->rc", bary, fc), 0, 1)
    return RenderOut(mask=mask.reshape(height, width), depth=depth.reshape(height, width),
                     rgb=rgb.reshape(height, width, 3), normal=normal.reshape(height, width, 3))


def shade(out: RenderOut, light_dir_world: np.ndarray, base: tuple[float, float, float] = (0.75, 0.75, 0.78),
          background: float = 1.0) -> np.ndarray:
    """Lambert-shaded grey render for judging geometry. Returns (H, W, 3) uint8."""
    l = light_dir_world / np.linalg.norm(light_dir_world)
    lam = np.clip(np.abs(out.normal @ l), 0, 1)
    img = (0.25 + 0.75 * lam)[..., None] * np.array(base)[None, None]
    img = np.where(out.mask[..., None], img, background)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """OpenCV w2c (4, 4) for a camera at ``eye`` looking at ``target`` with ``up`` roughly up in the image."""
    f = target - eye
    f = f / np.linalg.norm(f)
    r = np.cross(f, up)
    if np.linalg.norm(r) < 1e-8:
        r = np.cross(f, np.array([1.0, 0, 0]) if abs(f[0]) < 0.9 else np.array([0, 1.0, 0]))
    r = r / np.linalg.norm(r)
    d = np.cross(f, r)  # image +Y (down)
    R = np.stack([r, d, f])
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ eye
    return w2c
