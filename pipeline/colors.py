"""Visibility-aware vertex colours from the input photos."""
from __future__ import annotations

from typing import Callable

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from pipeline.render import render


def bilinear(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """img (H, W, C) float, uv (M, 2) pixel coords (pixel centres at +0.5) -> (M, C)."""
    H, W = img.shape[:2]
    x = np.clip(uv[:, 0] - 0.5, 0, W - 1)
    y = np.clip(uv[:, 1] - 0.5, 0, H - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    wx, wy = (x - x0)[:, None], (y - y0)[:, None]
    return ((img[y0, x0] * (1 - wx) + img[y0, x1] * wx) * (1 - wy)
            + (img[y1, x0] * (1 - wx) + img[y1, x1] * wx) * wy)


def vertex_colors(mesh: trimesh.Trimesh, images: list[np.ndarray], masks: list[np.ndarray],
                  Ks: np.ndarray, w2cs: np.ndarray, depth_scale: float = 0.5,
                  check: Callable[[float], None] = lambda f: None) -> tuple[np.ndarray, np.ndarray]:
    """Blend the photos onto the vertices (see :func:`point_colors`)."""
    return point_colors(np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals), mesh, images, masks, Ks, w2cs,
                        depth_scale, check)


def point_colors(V: np.ndarray, normals: np.ndarray, mesh: trimesh.Trimesh, images: list[np.ndarray],
                 masks: list[np.ndarray], Ks: np.ndarray, w2cs: np.ndarray, depth_scale: float = 0.5,
                 check: Callable[[float], None] = lambda f: None) -> tuple[np.ndarray, np.ndarray]:
    """Blend the photos onto surface points (vertices, or texels of a texture atlas).

    V: (P, 3) points on ``mesh``; normals: (P, 3) unit; images: N (H, W, 3) uint8; masks: N (H, W) bool;
    Ks (N, 3, 3); w2cs (N, 4, 4) OpenCV.
    A point takes a view's colour only where it is visible there (depth test against a ray-cast depth map of
    ``mesh``) and inside the mask, weighted by cos(normal, view)^4 so grazing views count little.
    Returns colours (P, 3) float32 in [0, 1] and the number of views that saw each point (P,) int.
    """
    acc = np.zeros((len(V), 3))
    wsum = np.zeros(len(V))
    seen = np.zeros(len(V), dtype=np.int32)
    eps = 0.005 * float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))
    for i, (img, m, K, w2c) in enumerate(zip(images, masks, Ks, w2cs)):
        H, W = img.shape[:2]
        # depth map at reduced resolution is enough for a visibility test with a tolerance of eps
        dw, dh = max(16, int(W * depth_scale)), max(16, int(H * depth_scale))
        Kd = np.diag([dw / W, dh / H, 1.0]) @ K
        depth = render(mesh, Kd, w2c, dw, dh).depth
        center = -w2c[:3, :3].T @ w2c[:3, 3]
        # cheap tests first (facing the camera, in front, inside the image), the rest only on the survivors
        to_cam = center - V
        to_cam /= np.linalg.norm(to_cam, axis=1, keepdims=True) + 1e-12
        cos = np.einsum("ij,ij->i", normals, to_cam)
        idx = np.nonzero(cos > 0.05)[0]
        cam = V[idx] @ w2c[:3, :3].T + w2c[:3, 3]
        z = cam[:, 2]
        keep = z > 1e-9
        idx, cam, z = idx[keep], cam[keep], z[keep]
        uv = (cam[:, :2] / z[:, None]) @ K[:2, :2].T + K[:2, 2]
        keep = (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        idx, uv, z = idx[keep], uv[keep], z[keep]
        uvd = uv * np.array([dw / W, dh / H])
        # nearest-pixel depth, minimum over a 2x2 neighbourhood so silhouette edges are not missed
        xd = np.clip(uvd[:, 0].astype(int), 0, dw - 1)
        yd = np.clip(uvd[:, 1].astype(int), 0, dh - 1)
        dmin = np.minimum.reduce([depth[yd, xd], depth[np.minimum(yd + 1, dh - 1), xd],
                                  depth[yd, np.minimum(xd + 1, dw - 1)]])
        keep = z <= dmin + eps
        keep &= m[np.clip(uv[:, 1].astype(int), 0, H - 1), np.clip(uv[:, 0].astype(int), 0, W - 1)]
        idx, uv = idx[keep], uv[keep]
        if len(idx):
            w = cos[idx] ** 4
            acc[idx] += w[:, None] * bilinear(img.astype(np.float32) / 255.0, uv)
            wsum[idx] += w
            seen[idx] += 1
        check((i + 1) / len(images))
    colors = np.full((len(V), 3), 0.5)
    has = wsum > 0
    colors[has] = acc[has] / wsum[has, None]
    if has.any() and not has.all():
        # points no photo saw (concavities, the underside) borrow the nearest seen colour
        _, nn = cKDTree(V[has]).query(V[~has], workers=-1)
        colors[~has] = colors[has][nn]
    return colors.astype(np.float32), seen
