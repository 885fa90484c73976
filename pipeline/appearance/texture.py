"""Texture atlas: decimate, unwrap with xatlas, bake the photos into a texture, pad the seams, and (on a GPU)
fit the texture to the photo pixels by sparse least squares (the renderer's bilinear model).

UV convention: xatlas/trimesh/OBJ, v = 0 at the bottom image row. Texel (row r, column c) has its centre at
u = (c + 0.5) / S, v = 1 - (r + 0.5) / S.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import trimesh

from pipeline.appearance.colors import point_colors
from pipeline.imaging.sampling import bilinear_weights


@dataclass(frozen=True)
class FitSettings:
    """Least-squares fit of the baked texture to the photo pixels (:func:`fit_texture`). Weights are in units
    of one photo pixel's squared error."""

    iterations: int = 60  # conjugate-gradient steps
    prior: float = 0.1  # pull of every texel towards its baked colour
    smooth: float = 1.0  # pull between the corrections of neighbouring texels of a chart
    view_power: float = 0.0  # weight of a pixel: |cos(normal, view direction)|^this
    max_views: int = 0  # views the pixels come from, evenly spaced (0: all)


@dataclass(frozen=True)
class TextureSettings:
    size: int = 2048  # texture side (square)
    max_faces: int = 120_000  # the textured mesh is a decimated copy of the final one
    padding: int = 4  # xatlas gutter between charts, texels
    view_weight_power: float = 4.0  # bake weight of a view: cos(normal, view direction)^this
    atlas_pieces: int = 0  # patches unwrapped in parallel (0: one per 2000 faces, at most 64), see ``unwrap``
    dilate: int = 8  # seam padding: colours pushed this many texels outside each chart
    fit: FitSettings | None = None  # least-squares fit of the bake to the photos (None: bake only)


@dataclass(frozen=True)
class Atlas:
    """vertices: (V', 3) float64 (seams split); faces: (F, 3) int64; uv: (V', 2) float32 in [0, 1];
    face_of_texel: (S, S) int32, -1 where no chart; bary: (S, S, 3) float32 barycentrics of each texel."""

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    face_of_texel: np.ndarray
    bary: np.ndarray
    texels_by: str = "cv2"  # what found the texels: "nvdiffrast", "cv2", or "cv2 (nvdiffrast failed: ...)"


def atlas_pieces(n_faces: int, configured: int) -> int:
    """Pieces the mesh is cut into before unwrapping: ``configured`` if > 0, else one per 2000 faces (1..64).

    xatlas's chart growing is superlinear in the faces of a piece, so smaller pieces pay even where there are more
    pieces than cores: 111k-face meshes of three photo jobs (spot, stool, armchair), 2 cores, 11.3-14.1 s in 16
    pieces, 5.1-7.9 s in 64, with the same packing utilisation (0.71-0.83) and no more charts."""
    if configured > 0:
        return configured
    return int(min(64, max(1, n_faces // 2000)))


def split_faces(vertices: np.ndarray, faces: np.ndarray, pieces: int, seed: int = 0) -> np.ndarray:
    """(F,) piece label of each face: k-means on the face centroids, so every piece is a compact patch.
    vertices (V, 3), faces (F, 3)."""
    if pieces <= 1 or len(faces) < 2 * pieces:
        return np.zeros(len(faces), dtype=np.int64)
    from scipy.cluster.vq import kmeans2

    centroids = np.asarray(vertices, dtype=np.float64)[faces].mean(axis=1)
    _, labels = kmeans2(centroids, pieces, seed=seed, minit="++")
    return labels.astype(np.int64)


def unwrap(mesh: trimesh.Trimesh, size: int, padding: int, pieces: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas parametrisation. Returns vertex map (V',) into mesh.vertices, faces (F, 3), uv (V', 2).

    With ``pieces`` > 1 the mesh is cut into that many compact patches first, each added to the atlas as its own
    mesh: xatlas then charts the pieces on separate threads and its chart growing (superlinear in the faces of a
    mesh) runs on smaller inputs. Measured on a 60k-face mesh, 2 cores: 17.9 s whole, 3.1 s in 16 pieces, same
    packing utilisation (0.69); the cuts only add chart seams. Output faces are grouped by piece."""
    import xatlas

    verts = np.asarray(mesh.vertices, dtype=np.float64)
    faces_in = np.asarray(mesh.faces, dtype=np.int64)
    labels = split_faces(verts, faces_in, pieces)
    atlas = xatlas.Atlas()
    used_per_piece = []
    for k in range(int(labels.max()) + 1):
        fk = faces_in[labels == k]
        if len(fk) == 0:
            continue
        used = np.unique(fk)
        local = np.full(len(verts), -1, dtype=np.int64)
        local[used] = np.arange(len(used))
        atlas.add_mesh(verts[used].astype(np.float32), local[fk].astype(np.uint32))
        used_per_piece.append(used)
    chart = xatlas.ChartOptions()
    chart.max_cost = 8.0  # measured: noisy scanned surfaces otherwise split into thousands of tiny charts
    pack = xatlas.PackOptions()
    pack.resolution = size
    pack.padding = padding
    pack.bilinear = True
    atlas.generate(chart, pack)
    vmaps, face_parts, uvs = [], [], []
    offset = 0
    for k, used in enumerate(used_per_piece):
        vmap, fk, uv = atlas[k]
        vmaps.append(used[vmap.astype(np.int64)])
        face_parts.append(fk.astype(np.int64) + offset)
        uvs.append(uv.astype(np.float32))
        offset += len(vmap)
    return np.concatenate(vmaps), np.concatenate(face_parts), np.concatenate(uvs)


def rasterize_atlas(uv: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which face covers each texel, and where in it. uv (V, 2), faces (F, 3) -> (S, S) int32, (S, S, 3) float32."""
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"uv must be (V, 2), got {uv.shape}")
    px = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], 1)  # continuous pixel coordinates
    face_id = np.full((size, size), -1, dtype=np.int32)
    # fixed-point polygons (shift=4: 1/16 texel) so small triangles are not lost to rounding
    pts = np.round((px[faces] - 0.5) * 16).astype(np.int32)
    for f in range(len(faces)):
        cv2.fillPoly(face_id, [pts[f]], int(f), lineType=cv2.LINE_8, shift=4)
    ys, xs = np.nonzero(face_id >= 0)
    f = face_id[ys, xs]
    tri = px[faces[f]]  # (T, 3, 2)
    q = np.stack([xs + 0.5, ys + 0.5], 1)
    v0, v1, v2 = tri[:, 0], tri[:, 1], tri[:, 2]
    d = (v1[:, 1] - v2[:, 1]) * (v0[:, 0] - v2[:, 0]) + (v2[:, 0] - v1[:, 0]) * (v0[:, 1] - v2[:, 1])
    d = np.where(np.abs(d) < 1e-12, 1e-12, d)
    l0 = ((v1[:, 1] - v2[:, 1]) * (q[:, 0] - v2[:, 0]) + (v2[:, 0] - v1[:, 0]) * (q[:, 1] - v2[:, 1])) / d
    l1 = ((v2[:, 1] - v0[:, 1]) * (q[:, 0] - v2[:, 0]) + (v0[:, 0] - v2[:, 0]) * (q[:, 1] - v2[:, 1])) / d
    bary = np.stack([l0, l1, 1 - l0 - l1], 1)
    bary = np.clip(bary, 0, 1)
    bary /= bary.sum(1, keepdims=True)
    out = np.zeros((size, size, 3), dtype=np.float32)
    out[ys, xs] = bary
    return face_id, out


def rasterize_atlas_gpu(uv: np.ndarray, faces: np.ndarray, size: int, device: str = "cuda",
                        build_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rasterize_atlas` by nvdiffrast: the face whose UV triangle holds each texel's centre, and where in it
    (a texel that only an edge grazes stays empty, where cv2's polygon fill gives it to the face). uv (V, 2),
    faces (F, 3) -> (S, S) int32, (S, S, 3) float32, in one call where cv2's fill makes one per face."""
    import torch

    from pipeline.imaging.raster import load_nvdiffrast

    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"uv must be (V, 2), got {uv.shape}")
    dr, glctx = load_nvdiffrast(build_dir)
    # every face gets its own three corners, whose attributes are the unit vectors: interpolated, they are the
    # texel's barycentrics in the face's own vertex order
    corners = np.asarray(uv, dtype=np.float32)[np.asarray(faces, dtype=np.int64).reshape(-1)]
    u = torch.as_tensor(corners, device=device)
    one = torch.ones_like(u[:, 0])
    # clip y = 1 - 2v: nvdiffrast's row 0 is clip y = -1 (see raster.projection), which is then v = 1, the top row
    pos = torch.stack([u[:, 0] * 2 - 1, 1 - 2 * u[:, 1], 0 * one, one], 1)[None].contiguous()
    tri = torch.arange(len(corners), dtype=torch.int32, device=device).reshape(-1, 3).contiguous()
    unit = torch.eye(3, device=device).repeat(len(tri), 1)[None].contiguous()
    with torch.no_grad():
        rast, _ = dr.rasterize(glctx, pos, tri, resolution=[size, size])
        b, _ = dr.interpolate(unit, rast, tri)
        face_id = rast[0, ..., 3].round().int() - 1  # triangle id + 1, exact in float32 below 2^24 faces
        inside = (face_id >= 0).float()[..., None]
        bary = b[0].clamp(0, 1) * inside
        bary = bary / bary.sum(-1, keepdim=True).clamp_min(1e-12) * inside
    return face_id.cpu().numpy().astype(np.int32), bary.cpu().numpy().astype(np.float32)


def build_atlas(mesh: trimesh.Trimesh, s: TextureSettings,
                layout: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, device: str = "cpu",
                build_dir: Path | None = None) -> Atlas:
    """The atlas of ``mesh``: unwrapped now, or from ``layout`` (vmap, faces, uv as :func:`unwrap` returns them,
    made for this mesh's faces, e.g. while the refinement ran); its texels found on the GPU where ``device`` is
    cuda (cv2 otherwise, or where the GPU's rasteriser fails to load)."""
    vmap, faces, uv = layout if layout is not None else unwrap(mesh, s.size, s.padding,
                                                               atlas_pieces(len(mesh.faces), s.atlas_pieces))
    face_id = bary = None
    how = "cv2"
    if device == "cuda":
        try:
            face_id, bary = rasterize_atlas_gpu(uv, faces, s.size, build_dir=build_dir)
            how = "nvdiffrast"
        except Exception as e:  # noqa: BLE001 - only a speed-up: no plugin, no memory, a driver error -> the CPU fill
            how = f"cv2 (nvdiffrast failed: {type(e).__name__}: {str(e)[:120]})"
    if face_id is None or bary is None:
        face_id, bary = rasterize_atlas(uv, faces, s.size)
    return Atlas(vertices=np.asarray(mesh.vertices)[vmap], faces=faces, uv=uv, face_of_texel=face_id, bary=bary,
                 texels_by=how)


def texel_points(atlas: Atlas, mesh_normals: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World position and normal of every covered texel. Returns rows, cols (T,), points (T, 3), normals (T, 3)."""
    ys, xs = np.nonzero(atlas.face_of_texel >= 0)
    f = atlas.face_of_texel[ys, xs]
    b = atlas.bary[ys, xs]
    tri = atlas.vertices[atlas.faces[f]]
    pts = np.einsum("tk,tkc->tc", b, tri)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    return np.stack([ys, xs], 1), pts, n


def pad_seams(tex: np.ndarray, covered: np.ndarray, texels: int, device: str = "cpu") -> np.ndarray:
    """Push colours outward from the charts (``texels`` rings), so bilinear filtering and mipmaps never mix in the
    empty background across a seam; the rest is filled with the mean colour. tex (S, S, 3) float; covered (S, S)
    bool -> (S, S, 3) float32. Each ring gives an empty texel next to the charts the mean of its covered 3 x 3
    neighbours. On a CUDA ``device`` the rings run in torch there: OpenCV's took about 1 s for a 2048-texel texture
    on a GPU machine's core, twice a job (on a CPU, OpenCV's filter is five times faster than torch's)."""
    if str(device).startswith("cuda"):
        return _pad_seams_torch(tex, covered, texels, device)
    out = np.array(tex, dtype=np.float32)
    mask = covered.copy()
    kernel = np.ones((3, 3), np.float32)
    for _ in range(texels):
        acc = cv2.filter2D(out * mask[..., None], -1, kernel, borderType=cv2.BORDER_CONSTANT)
        cnt = cv2.filter2D(mask.astype(np.float32), -1, kernel, borderType=cv2.BORDER_CONSTANT)
        grow = (cnt > 0) & ~mask
        out[grow] = acc[grow] / cnt[grow, None]
        mask |= grow
    if covered.any():
        out[~mask] = np.asarray(tex, dtype=np.float32)[covered].mean(0)
    return out


def _pad_seams_torch(tex: np.ndarray, covered: np.ndarray, texels: int, device: str) -> np.ndarray:
    """:func:`pad_seams` in torch on ``device``: the same rings (zeros beyond the edge, as OpenCV's BORDER_CONSTANT)."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(tex, dtype=np.float32), device=device).permute(2, 0, 1)[:, None]  # (3, 1, S, S)
    cov = torch.as_tensor(np.asarray(covered, dtype=bool), device=device)[None, None]
    m = cov.float()
    ones = torch.ones((1, 1, 3, 3), device=device)
    out = t.clone()
    for _ in range(texels):
        acc = F.conv2d(out * m, ones, padding=1)
        cnt = F.conv2d(m, ones, padding=1)
        grow = (cnt > 0) & (m == 0)
        out = torch.where(grow, acc / cnt.clamp(min=1.0), out)
        m = torch.where(grow, torch.ones_like(m), m)
    if bool(cov.any()):
        mean = t[:, 0][:, cov[0, 0]].mean(1)  # (3,)
        out = torch.where(m > 0, out, mean[:, None, None, None])
    return out[:, 0].permute(1, 2, 0).cpu().numpy()


def bake(atlas: Atlas, visibility_mesh: trimesh.Trimesh, images: list[np.ndarray], masks: list[np.ndarray],
         Ks: np.ndarray, w2cs: np.ndarray, s: TextureSettings,
         check: Callable[[float], None] = lambda f: None, device: str = "cpu") -> tuple[np.ndarray, dict[str, float]]:
    """Texture (S, S, 3) float32 in [0, 1] blended from the photos (visibility, view-angle weights), seams padded.
    ``device``: where the per-texel arithmetic runs (see :func:`pipeline.appearance.colors.point_colors`)."""
    rc, pts, nrm = texel_points(atlas)
    colors, seen = point_colors(pts, nrm, visibility_mesh, images, masks, Ks, w2cs, check=check, device=device,
                                power=s.view_weight_power)
    tex = np.zeros((s.size, s.size, 3), dtype=np.float32)
    tex[rc[:, 0], rc[:, 1]] = colors
    covered = atlas.face_of_texel >= 0
    tex = pad_seams(tex, covered, s.dilate, device=device)
    return tex, {"texels": int(len(pts)), "coverage": float(covered.mean()), "seen_fraction": float((seen > 0).mean())}


@dataclass(frozen=True)
class PixelSamples:
    """Photo pixels that see the textured mesh, one row per pixel.

    uv: (M, 2) float32 texture pixel coordinates (texel centres at +0.5, row 0 = top, as :func:`sample_texture`);
    rgb: (M, 3) float32 in [0, 1], the photo's colour there; weight: (M,) float32; view: (M,) int32."""

    uv: np.ndarray
    rgb: np.ndarray
    weight: np.ndarray
    view: np.ndarray

    @classmethod
    def empty(cls) -> "PixelSamples":
        return cls(np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.float32),
                   np.zeros(0, np.int32))


def _texture_pixel_uv(atlas: Atlas, size: int) -> np.ndarray:
    """Atlas UVs (V', 2, v up) -> texture pixel coordinates (V', 2), row 0 at the top."""
    return np.stack([atlas.uv[:, 0] * size, (1.0 - atlas.uv[:, 1]) * size], 1).astype(np.float32)


def _cos_weight(normals: np.ndarray, points: np.ndarray, center: np.ndarray, power: float) -> np.ndarray:
    """|cos(normal, direction to the camera)|^power, (M,). normals, points (M, 3)."""
    if power == 0:
        return np.ones(len(points), dtype=np.float32)
    d = center[None] - points
    d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-12
    return (np.abs((normals * d).sum(1)) ** power).astype(np.float32)


def pixel_samples_raycast(atlas: Atlas, images: list[np.ndarray], masks: list[np.ndarray], Ks: np.ndarray,
                          w2cs: np.ndarray, size: int, view_power: float = 0.0,
                          check: Callable[[float], None] = lambda f: None) -> PixelSamples:
    """Pixel samples by Embree ray casting through pixel centres: the renderer the held-out scores and the report
    use, so the fit models exactly how the textured mesh is judged. images: N (H, W, 3) uint8; masks: N (H, W) bool."""
    from pipeline.imaging.render import pixel_rays

    mesh = trimesh.Trimesh(atlas.vertices, atlas.faces, process=False)
    uvpx = _texture_pixel_uv(atlas, size)
    parts: list[tuple[np.ndarray, ...]] = []
    for i, (img, m, K, w2c) in enumerate(zip(images, masks, Ks, w2cs)):
        H, W = m.shape
        origin, dirs = pixel_rays(K, w2c, W, H)
        locs, ray, tri = mesh.ray.intersects_location(np.broadcast_to(origin, dirs.shape), dirs, multiple_hits=False)
        keep = np.asarray(m).reshape(-1)[ray]
        locs, ray, tri = locs[keep], ray[keep], tri[keep]
        bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], locs)
        uv = np.einsum("rk,rkc->rc", bary, uvpx[atlas.faces[tri]]).astype(np.float32)
        rgb = img.reshape(-1, 3)[ray].astype(np.float32) / 255.0
        w = _cos_weight(mesh.face_normals[tri], locs, origin, view_power)
        parts.append((uv, rgb, w, np.full(len(ray), i, dtype=np.int32)))
        check((i + 1) / len(images))
    if not parts:
        return PixelSamples.empty()
    return PixelSamples(*(np.concatenate([p[k] for p in parts]) for k in range(4)))


def pixel_samples_nvdiffrast(atlas: Atlas, images: list[np.ndarray], masks: list[np.ndarray], Ks: np.ndarray,
                             w2cs: np.ndarray, size: int, view_power: float = 0.0, device: str = "cuda",
                             build_dir: Path | None = None) -> PixelSamples:
    """Pixel samples on the GPU: nvdiffrast rasterises the atlas mesh at pixel centres (the same samples as
    :func:`pixel_samples_raycast`, measured in milliseconds per view instead of ~0.2 s)."""
    import torch

    from pipeline.imaging.raster import clip_coords, load_nvdiffrast

    dr, glctx = load_nvdiffrast(build_dir)
    dev = torch.device(device)
    verts = torch.tensor(atlas.vertices, dtype=torch.float32, device=dev)
    faces = torch.tensor(atlas.faces, dtype=torch.int32, device=dev)
    attrs = torch.cat([torch.tensor(_texture_pixel_uv(atlas, size), device=dev), verts], 1)[None].contiguous()
    tri = verts[faces.long()]
    fn = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    fn = fn / (fn.norm(dim=1, keepdim=True) + 1e-12)
    parts = []
    with torch.no_grad():
        for i, (img, m, K, w2c) in enumerate(zip(images, masks, Ks, w2cs)):
            H, W = m.shape
            w2ct = torch.tensor(w2c, dtype=torch.float32, device=dev)[None]
            clip = clip_coords(verts, torch.tensor(K, dtype=torch.float32, device=dev)[None], w2ct, (H, W))
            rast, _ = dr.rasterize(glctx, clip, faces, resolution=[H, W])
            out, _ = dr.interpolate(attrs, rast, faces)
            face = rast[0, ..., 3].long() - 1  # nvdiffrast: triangle id + 1, 0 where empty
            sel = (face >= 0) & torch.as_tensor(np.asarray(m), device=dev)
            o = out[0][sel]
            if view_power == 0:
                w = torch.ones(len(o), device=dev)
            else:
                center = -w2ct[0, :3, :3].T @ w2ct[0, :3, 3]
                d = center[None] - o[:, 2:5]
                d = d / (d.norm(dim=1, keepdim=True) + 1e-12)
                w = (fn[face[sel]] * d).sum(1).abs() ** view_power
            rgb = torch.as_tensor(np.asarray(img), device=dev)[sel].float() / 255.0
            parts.append((o[:, :2], rgb, w, torch.full((len(o),), i, dtype=torch.int32, device=dev)))
    if not parts:
        return PixelSamples.empty()
    return PixelSamples(*(torch.cat([p[k] for p in parts]).cpu().numpy() for k in range(4)))


def fit_texture(texture: np.ndarray, samples: PixelSamples, covered: np.ndarray, s: FitSettings,
                device: str = "cpu", check: Callable[[float], None] = lambda f: None) -> tuple[np.ndarray, dict]:
    """Least-squares fit of a (baked) texture to the photo pixels that see it.

    Every sample is a bilinear read of the texture (the renderer's model), so the texture that best reproduces
    the photos solves a sparse linear least-squares problem in the correction ``d`` of the referenced texels:

        min_d  sum_i w_i |A_i (t0 + d) - rgb_i|^2  +  prior |d|^2  +  smooth sum_(p,q neighbours) |d_p - d_q|^2

    The prior keeps texels that few pixels see at their baked colour; the smoothness term (within charts: both
    texels covered) makes the correction a field rather than per-texel noise. Solved with Jacobi-preconditioned
    conjugate gradients on the normal equations, all three channels at once.

    texture: (S, S, 3) float32 in [0, 1]; covered: (S, S) bool, texels inside a chart. Returns the fitted texture
    (S, S, 3) float32 (untouched where no sample reads) and a summary (RMSE over the samples before/after)."""
    import time

    import torch

    if texture.ndim != 3 or texture.shape[2] != 3 or covered.shape != texture.shape[:2]:
        raise ValueError(f"texture must be (S, S, 3) and covered (S, S), got {texture.shape} and {covered.shape}")
    if s.prior <= 0 and s.smooth <= 0:
        raise ValueError("fit needs prior > 0 or smooth > 0: unseen texels would make the system singular")
    t_start = time.monotonic()
    dev = torch.device(device)
    S0, S1 = texture.shape[:2]
    t0 = torch.as_tensor(texture, dtype=torch.float32, device=dev).reshape(-1, 3)
    uv = torch.as_tensor(samples.uv, dtype=torch.float32, device=dev)
    rgb = torch.as_tensor(samples.rgb, dtype=torch.float32, device=dev)
    sw = torch.as_tensor(samples.weight, dtype=torch.float32, device=dev)
    if len(uv) == 0:
        return texture, {"skipped": "no photo pixel sees the textured mesh"}
    idx, w = bilinear_weights(uv, S0, S1)
    ref, cidx = torch.unique(idx.reshape(-1), return_inverse=True)
    cidx = cidx.reshape(idx.shape)
    T = len(ref)
    flat = cidx.reshape(-1)

    def A(d: torch.Tensor) -> torch.Tensor:  # (T, 3) -> (M, 3)
        return (d[cidx] * w[..., None]).sum(1)

    def At(r: torch.Tensor) -> torch.Tensor:  # (M, 3) -> (T, 3)
        return torch.zeros((T, 3), device=dev).index_add_(0, flat, (w[..., None] * r[:, None, :]).reshape(-1, 3))

    # neighbour pairs (right, down) of referenced texels that both lie inside charts
    lut = torch.full((S0 * S1,), -1, dtype=torch.long, device=dev)
    lut[ref] = torch.arange(T, device=dev)
    L = lut.reshape(S0, S1)
    cov = torch.as_tensor(covered, device=dev) & (L >= 0)
    pa, pb = [], []
    for a, b, ca, cb in ((L[:, :-1], L[:, 1:], cov[:, :-1], cov[:, 1:]), (L[:-1], L[1:], cov[:-1], cov[1:])):
        ok = ca & cb
        pa.append(a[ok])
        pb.append(b[ok])
    pa_t, pb_t = torch.cat(pa), torch.cat(pb)

    def lap(d: torch.Tensor) -> torch.Tensor:
        e = d[pa_t] - d[pb_t]
        return torch.zeros_like(d).index_add_(0, pa_t, e).index_add_(0, pb_t, -e)

    def normal(d: torch.Tensor) -> torch.Tensor:
        return At(sw[:, None] * A(d)) + s.prior * d + (s.smooth * lap(d) if s.smooth > 0 else 0.0)

    r0 = rgb - A(t0[ref])  # residual of the baked texture
    rmse_before = float(((r0 ** 2).sum(1).mean() / 3).sqrt())
    degree = torch.zeros(T, device=dev).index_add_(0, pa_t, torch.ones_like(pa_t, dtype=torch.float32))
    degree.index_add_(0, pb_t, torch.ones_like(pb_t, dtype=torch.float32))
    diag = (torch.zeros(T, device=dev).index_add_(0, flat, (sw[:, None] * w * w).reshape(-1))
            + s.prior + s.smooth * degree)[:, None]
    x = torch.zeros((T, 3), device=dev)
    r = At(sw[:, None] * r0)
    z = r / diag
    p = z.clone()
    rz = (r * z).sum(0)
    for it in range(s.iterations):
        Ap = normal(p)
        alpha = rz / (p * Ap).sum(0).clamp(min=1e-20)
        x += alpha * p
        r -= alpha * Ap
        z = r / diag
        rz_new = (r * z).sum(0)
        p = z + (rz_new / rz.clamp(min=1e-20)) * p
        rz = rz_new
        if it % 10 == 0:
            check(it / max(1, s.iterations))
    out = t0.clone()
    out[ref] = (t0[ref] + x).clamp(0, 1)
    r1 = rgb - A(out[ref])
    rmse_after = float(((r1 ** 2).sum(1).mean() / 3).sqrt())
    return out.reshape(S0, S1, 3).cpu().numpy(), {
        "samples": int(len(uv)), "texels_fitted": int(T), "iterations": s.iterations, "prior": s.prior,
        "smooth": s.smooth, "rmse_before": round(rmse_before, 5), "rmse_after": round(rmse_after, 5),
        "seconds": round(time.monotonic() - t_start, 3)}
