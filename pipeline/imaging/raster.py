"""Differentiable rasterisers for the refinement stage: nvdiffrast on the GPU, pytorch3d on the CPU.

Both take the same inputs and return antialiased/soft coverage and interpolated vertex colours, so the
optimisation loop does not care which one runs.
"""
from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

log = logging.getLogger("hotmesh.raster")


@dataclass(frozen=True)
class Cameras:
    """A batch of pinhole cameras. K: (B, 3, 3) pixels; w2c: (B, 4, 4) OpenCV; size: (H, W) of every view."""

    K: torch.Tensor
    w2c: torch.Tensor
    size: tuple[int, int]


class Rasterizer(Protocol):
    name: str

    def render(self, verts: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor,
               cams: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
        """verts (V, 3) float32 world; faces (F, 3) int32; colors (V, 3) -> rgb (B, H, W, 3), alpha (B, H, W)."""
        ...


def to_camera(verts: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    """(V, 3), (B, 4, 4) -> (B, V, 3) camera-space points (OpenCV: +Z forward)."""
    return torch.einsum("bij,vj->bvi", w2c[:, :3, :3], verts) + w2c[:, None, :3, 3]


def clip_space(cam: torch.Tensor, K: torch.Tensor, size: tuple[int, int], near: float, far: float) -> torch.Tensor:
    """Camera points (B, V, 3) -> clip coordinates (B, V, 4) whose NDC y grows downwards, so row 0 of
    nvdiffrast's output is the top image row, as in the photos."""
    H, W = size
    x, y, z = cam.unbind(-1)
    fx, fy, cx, cy = K[:, 0, 0, None], K[:, 1, 1, None], K[:, 0, 2, None], K[:, 1, 2, None]
    xc = (2 * fx / W) * x + (2 * cx / W - 1) * z
    yc = (2 * fy / H) * y + (2 * cy / H - 1) * z
    zc = (far + near) / (far - near) * z - 2 * far * near / (far - near)
    return torch.stack([xc, yc, zc, z], dim=-1)


def clip_coords(verts: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """World vertices (V, 3) seen by B cameras (K (B, 3, 3), w2c (B, 4, 4)) -> contiguous clip coordinates
    (B, V, 4) for nvdiffrast, with near/far planes around the vertices' depths."""
    cam = to_camera(verts, w2c)
    depth = cam[..., 2].detach()
    near = max(float(depth[depth > 0].min()) * 0.5, 1e-4) if (depth > 0).any() else 1e-3
    far = float(depth.max()) * 2.0 + near
    return clip_space(cam, K, size, near, far).contiguous()


def load_nvdiffrast(build_dir: Path | None = None):
    """Import nvdiffrast.torch, applying the loader fix for recent torch (plugin built but not importable)."""
    if build_dir is not None:
        import os

        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(build_dir))
    import nvdiffrast.torch as dr

    try:
        ctx = dr.RasterizeCudaContext()
    except ModuleNotFoundError as e:
        if "nvdiffrast_plugin" not in str(e):
            raise
        from torch.utils.cpp_extension import _get_build_directory

        for name in ("nvdiffrast_plugin", str(e.name or "")):
            if name:
                sys.path.insert(0, _get_build_directory(name, False))
        importlib.invalidate_caches()
        ctx = dr.RasterizeCudaContext()
    return dr, ctx


class NvdiffrastRasterizer:
    name = "nvdiffrast"

    def __init__(self, build_dir: Path | None = None) -> None:
        self.dr, self.ctx = load_nvdiffrast(build_dir)

    def render(self, verts, faces, colors, cams):
        dr = self.dr
        clip = clip_coords(verts, cams.K, cams.w2c, cams.size)
        rast, _ = dr.rasterize(self.ctx, clip, faces, resolution=list(cams.size))
        rgb, _ = dr.interpolate(colors[None].contiguous(), rast, faces)
        cover = (rast[..., 3:4] > 0).float()
        out = dr.antialias(torch.cat([rgb * cover, cover], dim=-1).contiguous(), rast, clip, faces)
        return out[..., :3], out[..., 3]


class Pytorch3dRasterizer:
    """CPU fallback: soft silhouettes (SoftRas-style) so edges get gradients without antialiasing."""

    name = "pytorch3d"

    def __init__(self, sigma_px: float = 0.25, faces_per_pixel: int = 8) -> None:
        # measured on the sample: sigma 0.25 px with 8 faces per pixel gives IoU 0.984 against a hard
        # rasterisation at 0.7 s per 256^2 view; 0.5 px or 4 faces drop it to 0.81-0.96
        from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes  # noqa: F401  (fail early)

        self.sigma_px = sigma_px
        self.k = faces_per_pixel

    def render(self, verts, faces, colors, cams):
        from pytorch3d.ops import interpolate_face_attributes
        from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
        from pytorch3d.structures import Meshes

        H, W = cams.size
        s = float(min(H, W))
        cam = to_camera(verts, cams.w2c)
        z = cam[..., 2].clamp(min=1e-6)
        u = cam[..., 0] / z * cams.K[:, 0, 0, None] + cams.K[:, 0, 2, None]
        v = cam[..., 1] / z * cams.K[:, 1, 1, None] + cams.K[:, 1, 2, None]
        # pytorch3d NDC: +X left, +Y up, the shorter image side spans [-1, 1]
        ndc = torch.stack([(W - 2 * u) / s, (H - 2 * v) / s, z], dim=-1)
        B = ndc.shape[0]
        meshes = Meshes(verts=list(ndc), faces=[faces.long()] * B)
        sigma = (2.0 * self.sigma_px / s) ** 2  # squared NDC distance
        p2f, _zbuf, bary, dists = rasterize_meshes(meshes, image_size=(H, W), blur_radius=sigma * 9.0,
                                                   faces_per_pixel=self.k, perspective_correct=False, bin_size=0)
        prob = torch.sigmoid(-dists / sigma) * (p2f >= 0)
        alpha = 1.0 - torch.prod(1.0 - prob, dim=-1)
        face_cols = colors[faces.long()]  # (F, 3, 3)
        packed = face_cols.repeat(B, 1, 1)
        rgb = interpolate_face_attributes(p2f[..., :1], bary[..., :1, :], packed)[..., 0, :]
        rgb = rgb * (p2f[..., 0:1] >= 0)
        return rgb, alpha


def make_rasterizer(device: str, build_dir: Path | None = None) -> tuple[Rasterizer | None, str]:
    """The best rasteriser for ``device``, or None with the reason."""
    if device == "cuda":
        try:
            return NvdiffrastRasterizer(build_dir), "nvdiffrast (GPU)"
        except (ImportError, RuntimeError, OSError) as e:
            log.warning("nvdiffrast unavailable (%s); falling back to pytorch3d on the CPU", e)
    try:
        return Pytorch3dRasterizer(), "pytorch3d (CPU)"
    except (ImportError, OSError) as e:
        return None, f"no differentiable rasteriser: nvdiffrast and pytorch3d both failed to load ({e})"


def coverage_masks(vertices: np.ndarray, faces: np.ndarray, Ks: np.ndarray, w2cs: np.ndarray,
                   sizes: list[tuple[int, int]], device: str, build_dir: Path | None = None) -> list[np.ndarray]:
    """Silhouettes of a mesh in N views: vertices (V, 3), faces (F, 3), Ks (N, 3, 3), w2cs (N, 4, 4), sizes N
    (width, height). nvdiffrast on a GPU (one view at a time), Embree ray casting elsewhere or where nvdiffrast does
    not load. -> N (height, width) bool."""
    if device == "cuda":
        try:
            dr, ctx = load_nvdiffrast(build_dir)
            v = torch.as_tensor(np.asarray(vertices), dtype=torch.float32, device="cuda")
            f = torch.as_tensor(np.asarray(faces), dtype=torch.int32, device="cuda")
            out = []
            for K, w2c, (w, h) in zip(Ks, w2cs, sizes):
                clip = clip_coords(v, torch.as_tensor(K[None], dtype=torch.float32, device="cuda"),
                                   torch.as_tensor(w2c[None], dtype=torch.float32, device="cuda"), (h, w))
                rast, _ = dr.rasterize(ctx, clip, f, resolution=[h, w])
                out.append((rast[0, ..., 3] > 0).cpu().numpy())
            return out
        except (ImportError, RuntimeError, OSError) as e:
            log.warning("nvdiffrast unavailable for silhouettes (%s); ray casting instead", e)
    import trimesh

    from pipeline.imaging.render import render

    mesh = trimesh.Trimesh(np.asarray(vertices), np.asarray(faces), process=False)
    return [render(mesh, K, w2c, w, h).mask for K, w2c, (w, h) in zip(Ks, w2cs, sizes)]
