"""Mesh refinement by differentiable rendering: move the visual hull's vertices so that renders match the
masks (silhouette loss) and the photos (photometric loss with optimised per-vertex colour).

Shape updates go through the Laplacian preconditioning of "Large Steps in Inverse Rendering of Geometry"
(Nicolet et al. 2021, PyPI ``largesteps``): the optimiser works on u = (I + lambda L) v, so each step is a
smooth deformation and the mesh does not tangle. Coarse-to-fine: image resolution and mesh resolution
(midpoint subdivision) grow level by level. Everything runs in a normalised frame (object in the unit
sphere), so step sizes and lambda do not depend on the input's units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy import ndimage

from pipeline.appearance.photoconsistency import blurred_gray, pair_loss, pair_neighbours, project
from pipeline.context import GpuMemoryError
from pipeline.imaging.raster import Cameras, Rasterizer, RenderWithPoints


@dataclass(frozen=True)
class RefineSettings:
    levels: tuple[tuple[int, int], ...] = ((256, 250), (512, 250))  # (image long side, iterations) per level
    max_faces: int = 250_000  # subdivide between levels while staying under this
    start_faces: int = 30_000  # the hull is decimated to this before the first level
    lam: float = 19.0  # largesteps smoothness
    lr: float = 3e-2  # shape step (largesteps paper value for lambda = 19), normalised units
    color_lr: float = 3e-2
    w_silhouette: float = 1.0
    w_photo: float = 2.0  # photometric L1 weight (silhouette 1): measured better than 1 on four sets
    # pytorch3d mesh regularisers (0 disables one): normal consistency, uniform Laplacian, edge length
    w_normal: float = 0.0
    w_laplacian: float = 0.0
    w_edge: float = 0.0
    lam_decay: float = 1.0  # lambda is multiplied by this at each finer level (less smoothing as detail grows)
    views_per_step: int = 0  # 0: as many as fit in free memory (all views if they fit); else at most that
    # how the mesh grows between levels: "isotropic" (pymeshlab remeshing to uniform triangles at
    # start_faces * 4^level, also before the first level) or "subdivide" (midpoint, x4 faces). Measured on an H100:
    # F@0.2% 0.968 vs 0.964 (spot_render), 0.990 vs 0.987 (bob), +3.5 s (bench/results/tune-C-h100.json);
    # "isotropic_first": the remesh before the first level only (the cup lost 0.04, refine-remesh-cup-h100-25c0fbe)
    remesh: str = "isotropic"
    remesh_iterations: int = 4  # pymeshlab's split / collapse / flip / relax rounds per isotropic remesh
    # the shape step of the last level decays (cosine) to this fraction of ``lr``: Adam at a constant step leaves
    # the vertices jittering by about a step around the optimum, a sub-pixel error on every silhouette
    lr_final: float = 1.0
    # a colour gain and offset per view, fitted with the shape (exposure and white balance differ between photos)
    view_gains: bool = False
    gain_lr: float = 1e-2
    # no vertex moves further than this (normalised units: the mesh fits the unit sphere) from where its level
    # starts; 0: no limit
    max_move: float = 0.0
    # render each photo's window around the object (``object_windows``) instead of the whole frame: the same pixels
    # then fall on the object, up to the photo's own resolution (the stage sets it on a GPU: refine.crop)
    crop: bool = False
    # photo-consistency between neighbouring photos through the mesh (pipeline.appearance.photoconsistency): its
    # weight (0: off), the views per step that get it (each with one of its ``pair_neighbours``) and the NCC
    # window's radius in pixels of the level
    w_pair: float = 0.0
    pair_views: int = 4
    pair_radius: int = 2
    pair_blur: float = 0.0  # the photos' Gaussian blur for the term, pixels of the level (1 measured worse than 0)
    pair_first_level: int = 0  # the first level that gets the term
    pair_last_level: int = -1  # the last level that gets it (-1: every level from the first)


@dataclass(frozen=True)
class RefineResult:
    vertices: np.ndarray  # (V, 3) float64, world units
    faces: np.ndarray  # (F, 3) int64
    colors: np.ndarray  # (V, 3) float32 in [0, 1]
    losses: tuple[float, ...]  # final loss per level
    views_per_step: int
    seconds_per_level: tuple[float, ...]
    # of which the mesh for the level (remeshing on the CPU) and its targets' upload: the part a slow host stretches
    setup_seconds_per_level: tuple[float, ...] = ()
    mesh_seconds_per_level: tuple[float, ...] = ()  # of the setup: the level's mesh (the CPU remesh)
    regularisers: str = "none"  # what ran: "pytorch3d (normal 0.01, ...)", "none", or why not
    remesh: str = "subdivide"  # what ran between levels, or why isotropic remeshing fell back
    view_gains: list[list[float]] | None = None  # per view: gain r, g, b, offset r, g, b (when fitted)
    window_share: float = 1.0  # the last level's mean window width, as a share of the photo's (1: whole photos)
    # per level, the share of the covered object pixels that the photo-consistency term compared in its last step
    # (a neighbour saw the same point); empty when the term is off
    pair_share_per_level: tuple[float, ...] = ()


def normalisation(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and scale that map the mesh into the unit sphere: x_n = (x - c) * s."""
    c = (vertices.max(0) + vertices.min(0)) / 2
    r = float(np.linalg.norm(vertices - c, axis=1).max())
    return c, 1.0 / max(r, 1e-12)


def normalise_cameras(w2c: np.ndarray, c: np.ndarray, s: float) -> np.ndarray:
    """World-to-camera (N, 4, 4) for points x_n = (x - c) * s: same rotation, translation rescaled."""
    out = w2c.copy()
    out[:, :3, 3] = (w2c[:, :3, 3] + np.einsum("nij,j->ni", w2c[:, :3, :3], c)) * s
    return out


def parameterization_matrix(verts: torch.Tensor, faces: torch.Tensor, lam: float) -> torch.Tensor:
    """Sparse (V, V) M = I + lam * L with the uniform (combinatorial) Laplacian L, as largesteps'
    ``compute_matrix`` builds it, but on the tensors' own device (largesteps hard-codes CUDA there).
    verts: (V, 3); faces: (F, 3) int64."""
    V = verts.shape[0]
    ii = faces[:, [1, 2, 0]].flatten()
    jj = faces[:, [2, 0, 1]].flatten()
    adj = torch.stack([torch.cat([ii, jj]), torch.cat([jj, ii])], dim=0).unique(dim=1)
    ones = torch.ones(adj.shape[1], device=verts.device, dtype=torch.float32)
    diag = torch.arange(V, device=verts.device)
    idx = torch.cat([adj, torch.stack([adj[0], adj[0]]), torch.stack([diag, diag])], dim=1)
    vals = torch.cat([-lam * ones, lam * ones, torch.ones(V, device=verts.device)])
    return torch.sparse_coo_tensor(idx, vals, (V, V)).coalesce()


def mesh_regulariser(settings: RefineSettings) -> tuple[Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None, str]:
    """pytorch3d's mesh losses as one weighted callable ``reg(verts (V, 3), faces (F, 3) int64, edge_target)``, or
    None with the reason (no weight set, or pytorch3d does not load with this torch)."""
    weights = {"normal": settings.w_normal, "laplacian": settings.w_laplacian, "edge": settings.w_edge}
    active = {k: w for k, w in weights.items() if w > 0}
    if not active:
        return None, "none"
    try:
        from pytorch3d.loss import mesh_edge_loss, mesh_laplacian_smoothing, mesh_normal_consistency
        from pytorch3d.structures import Meshes
    except (ImportError, OSError) as e:  # e.g. `from pytorch3d import _C` fails against another torch build
        return None, f"unavailable: pytorch3d does not load ({type(e).__name__}: {str(e)[:120]})"

    def reg(verts: torch.Tensor, faces: torch.Tensor, edge_target: float) -> torch.Tensor:
        m = Meshes(verts=[verts], faces=[faces])
        loss = verts.new_zeros(())
        if "normal" in active:
            loss = loss + active["normal"] * mesh_normal_consistency(m)
        if "laplacian" in active:
            loss = loss + active["laplacian"] * mesh_laplacian_smoothing(m, method="uniform")
        if "edge" in active:
            loss = loss + active["edge"] * mesh_edge_loss(m, target_length=edge_target) / edge_target ** 2
        return loss

    return reg, "pytorch3d (" + ", ".join(f"{k} {w:g}" for k, w in active.items()) + ")"


def mean_edge_length(verts: np.ndarray, faces: np.ndarray) -> float:
    """Mean length of the (F, 3) faces' edges (each interior edge counted twice), in the verts' units."""
    e = verts[faces[:, [1, 2, 0]]] - verts[faces]
    return float(np.linalg.norm(e, axis=-1).mean())


def views_that_fit(n_views: int, size: tuple[int, int], device: torch.device, bytes_per_pixel: int = 400) -> int:
    """Views per step from free GPU memory (measured, not assumed). ~400 B/pixel covers rasteriser buffers,
    interpolated attributes, antialiasing and their gradients with margin."""
    if device.type != "cuda":
        return min(n_views, 4)
    # the memory calls below want an indexed device ("cuda" alone is refused by some of them)
    device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    free, total = torch.cuda.mem_get_info(device)
    # a process capped below the card (torch.cuda.set_per_process_memory_fraction: a shared card, or a smaller card
    # emulated by the benchmark) may use only its share, whatever the card has free
    cap = torch.cuda.get_per_process_memory_fraction(device) * total
    free = min(free, max(0, int(cap - torch.cuda.memory_allocated(device))))
    per_view = size[0] * size[1] * bytes_per_pixel
    fit = int(0.6 * free // per_view)
    if fit < 1:
        raise GpuMemoryError(f"one {size[1]}x{size[0]} view needs ~{per_view / 2**20:.0f} MiB for refinement but only "
                          f"{free / 2**20:.0f} MiB of GPU memory is free: lower refine.image_size")
    return max(1, min(n_views, fit))


def silhouette_targets(masks: list[np.ndarray], alphas: list[np.ndarray | None]) -> list[np.ndarray]:
    """Per-view silhouette target, (H, W) float32 coverage in [0, 1].

    masks: N (H, W) bool; alphas: N (H, W) uint8 alpha mattes or None. Where a view's mask is exactly its alpha
    thresholded at 127 (the mask came from the alpha channel), the matte itself is the target: an antialiased
    render's edge pixels carry sub-pixel coverage that the thresholded mask throws away, and the refinement
    renders antialiased coverage. Elsewhere (mask files, automatic masks) the binary mask is the target."""
    if len(masks) != len(alphas):
        raise ValueError(f"silhouette_targets: {len(masks)} masks but {len(alphas)} alphas")
    out = []
    for m, a in zip(masks, alphas):
        if a is not None and a.shape == m.shape and np.array_equal(a > 127, m):
            out.append(a.astype(np.float32) / 255.0)
        else:
            out.append(m.astype(np.float32))
    return out


def cut_to_outline(mask: np.ndarray, cover: np.ndarray, grow_px: float) -> np.ndarray:
    """``mask`` (H, W) bool without the pixels farther than ``grow_px`` pixels from ``cover`` (H, W) bool, the start
    mesh's own outline in the same view: an estimated silhouette may not ask the refinement to grow the mesh where
    the fusion put nothing near (the contact shadow under a seat, which the unseen fill lifted the hull out of).
    grow_px <= 0: ``mask`` unchanged."""
    mask = np.asarray(mask, dtype=bool)
    cover = np.asarray(cover, dtype=bool)
    if mask.shape != cover.shape:
        raise ValueError(f"cut_to_outline: mask {mask.shape} and cover {cover.shape} differ")
    if grow_px <= 0:
        return mask.copy()
    if not cover.any():
        return np.zeros_like(mask)
    # distance to the nearest covered pixel, exact (Euclidean), so that the growth is round, not a square
    far = ndimage.distance_transform_edt(~cover) > grow_px
    return mask & ~far


SILHOUETTE_SOURCES = ("photos", "outline", "agree")


def outline_target(mask: np.ndarray, cover: np.ndarray, source: str) -> np.ndarray:
    """The silhouette target of one view from its estimated silhouette ``mask`` (H, W) bool and ``cover`` (H, W)
    bool, the fused surface's own outline in the same view. -> (H, W): ``mask`` itself for "photos"; ``cover`` for
    "outline"; for "agree", 1 where both hold the pixel, 0 where neither does and 0.5 where they differ (float32).

    A target of 0.5 leaves the pixel to the photos: the L1 silhouette loss costs 0.5 whether it is covered or not, and
    the photometric target there (the photo times the target) costs the same either way for a colour that matches."""
    mask = np.asarray(mask, dtype=bool)
    cover = np.asarray(cover, dtype=bool)
    if mask.shape != cover.shape:
        raise ValueError(f"outline_target: mask {mask.shape} and cover {cover.shape} differ")
    if source == "photos":
        return mask.copy()
    if source == "outline":
        return cover.copy()
    if source == "agree":
        return (mask.astype(np.float32) + cover.astype(np.float32)) / 2
    raise ValueError(f"outline_target: source must be one of {', '.join(SILHOUETTE_SOURCES)}, not {source!r}")


REMESH_MODES = ("isotropic", "isotropic_first", "subdivide")


def grow_mesh(v: np.ndarray, f: np.ndarray, colors: np.ndarray, level: int,
              settings: RefineSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The mesh for ``level``: v (V, 3), f (F, 3), colors (V, 3) -> new v, f, colors and what was done.

    Midpoint subdivision after the first level while under ``max_faces``; with ``remesh = "isotropic"`` an
    isotropic remesh to ``start_faces * 4^level`` (capped) at every level instead, colours carried over from
    the nearest old vertex; with ``"isotropic_first"`` that remesh before the first level only. Falls back to subdivision where pymeshlab is missing or the remesh is refused; the note then says why and at which level."""
    from pipeline.geometry.meshing import isotropic_remesh_or_reason

    if settings.remesh not in REMESH_MODES:
        raise ValueError(f"refine: remesh must be one of {', '.join(REMESH_MODES)}, not {settings.remesh!r}")
    if settings.remesh == "isotropic" or (settings.remesh == "isotropic_first" and level == 0):
        target = min(settings.max_faces, settings.start_faces * 4 ** level)
        out = isotropic_remesh_or_reason(v, f, target, iterations=settings.remesh_iterations)
        if not isinstance(out, str):
            from scipy.spatial import cKDTree

            nv, nf = out
            _, nearest = cKDTree(v).query(nv)
            return nv, nf, colors[nearest], "isotropic"
        note = f"subdivide (no isotropic remesh for level {level}: {out})"
    elif settings.remesh == "isotropic_first":
        note = "isotropic_first"  # the first level's mesh is remeshed; midpoint subdivision keeps it uniform after
    else:
        note = "subdivide"
    if level > 0 and len(f) * 4 <= settings.max_faces:
        v, f, attrs = trimesh.remesh.subdivide(v, f, vertex_attributes={"color": colors})
        colors = np.asarray(attrs["color"])
    return v, f, colors, note


CROP_MARGIN = 0.1  # an object window grows by this share of the object's extent on each side


def mask_boxes(masks: list[np.ndarray]) -> np.ndarray:
    """Per mask (H, W) (bool or coverage), the box of its pixels above 0 as (x0, y0, x1, y1) with x1, y1 exclusive,
    or -1 everywhere for an empty mask. -> (N, 4) int64. The masks do not change between levels: found once."""
    out = np.full((len(masks), 4), -1, dtype=np.int64)
    for i, m in enumerate(masks):
        on = np.asarray(m) > 0
        cols, rows = np.flatnonzero(on.any(0)), np.flatnonzero(on.any(1))
        if len(cols):
            out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return out


def object_windows(masks: list[np.ndarray], vertices: np.ndarray, Ks: np.ndarray, w2cs: np.ndarray,
                   out_hw: tuple[int, int], margin: float = CROP_MARGIN, boxes: np.ndarray | None = None
                   ) -> np.ndarray:
    """Per view, the window of the photo that holds the object, for rendering at ``out_hw`` (h, w) pixels.

    masks: N (H, W) silhouette targets (bool or coverage), each its photo's size; vertices (V, 3) world units, the
    mesh being refined; Ks (N, 3, 3), w2cs (N, 4, 4) OpenCV. A window holds the mask's box and the mesh's projected
    box, grown by ``margin`` of their extent on each side, with the output's aspect ratio (so pixels stay square),
    never fewer pixels than ``out_hw`` (no upsampling: the photo has no more detail to give) and never outside the
    photo (moved inside, or cut to the photo where it is wider or taller). A view where the mesh reaches behind the
    camera keeps the whole photo. boxes: the masks' :func:`mask_boxes`, where the caller has them already.
    -> (N, 4) int64 (x0, y0, width, height) in the photo's pixels."""
    if not (len(masks) == len(Ks) == len(w2cs)):
        raise ValueError("object_windows: masks, Ks and w2cs must have the same length")
    if boxes is None:
        boxes = mask_boxes(masks)
    if len(boxes) != len(masks):
        raise ValueError("object_windows: one mask box per mask")
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not len(vertices):
        raise ValueError(f"object_windows needs (V, 3) vertices, got {vertices.shape}")
    out = []
    for m, box, K, w2c in zip(masks, boxes, np.asarray(Ks, np.float64), np.asarray(w2cs, np.float64)):
        H, W = m.shape[:2]
        cam = vertices @ w2c[:3, :3].T + w2c[:3, 3]
        if (cam[:, 2] <= 1e-9).any():
            out.append((0, 0, W, H))
            continue
        uv = cam[:, :2] / cam[:, 2:] * K[[0, 1], [0, 1]] + K[:2, 2]
        lo, hi = np.clip(uv.min(0), 0, [W, H]), np.clip(uv.max(0), 0, [W, H])
        if box[0] >= 0:
            lo = np.minimum(lo, box[:2])
            hi = np.maximum(hi, box[2:])
        ext = float(max(hi - lo))
        lo, hi = lo - margin * ext, hi + margin * ext
        # the output's aspect ratio, at least the output's pixels, at most the photo
        aspect = out_hw[1] / out_hw[0]
        w = max(hi[0] - lo[0], (hi[1] - lo[1]) * aspect, out_hw[1] * 1.0)
        h = min(max(w / aspect, float(out_hw[0])), float(H))
        w = min(w, float(W))
        wi, hi_ = int(round(w)), int(round(h))
        cx, cy = (lo + hi) / 2
        x0 = int(round(min(max(cx - wi / 2, 0), W - wi)))
        y0 = int(round(min(max(cy - hi_ / 2, 0), H - hi_)))
        out.append((x0, y0, wi, hi_))
    return np.asarray(out, dtype=np.int64)


def level_windows(images: list[np.ndarray], masks: list[np.ndarray], vertices: np.ndarray, Ks: np.ndarray,
                  w2cs: np.ndarray, out_hw: tuple[int, int], crop: bool, boxes: np.ndarray | None = None
                  ) -> np.ndarray:
    """The window of each photo that a level renders at ``out_hw``: the object's (:func:`object_windows`, with the
    masks' ``boxes`` where given) with ``crop``, else the whole photo at its own size (a set may mix portrait and
    landscape photos, and each one's intrinsics scale by its own size). -> (N, 4) int64 (x0, y0, w, h)."""
    if crop:
        return object_windows(masks, vertices, Ks, w2cs, out_hw, boxes=boxes)
    return np.array([[0, 0, im.shape[1], im.shape[0]] for im in images], dtype=np.int64)


def window_intrinsics(Ks: np.ndarray, windows: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Ks (N, 3, 3) of whole photos -> those of their windows (N, 4) (x0, y0, w, h) resampled to ``out_hw``:
    u' = (u - x0) * out_w / w (pixel corners at integers, as the whole-frame scaling assumes)."""
    K = np.array(Ks, dtype=np.float64, copy=True)
    win = np.asarray(windows, dtype=np.float64)
    sx, sy = out_hw[1] / win[:, 2], out_hw[0] / win[:, 3]
    K[:, 0, :] *= sx[:, None]
    K[:, 1, :] *= sy[:, None]
    K[:, 0, 2] -= win[:, 0] * sx
    K[:, 1, 2] -= win[:, 1] * sy
    return K


def _resize_stack(imgs: list[np.ndarray], size: tuple[int, int], device: torch.device,
                  windows: np.ndarray | None = None) -> torch.Tensor:
    """List of (H, W[, C]) arrays -> (N, h, w, C) float tensor on ``device``, area-averaged (values as given: the
    caller scales them); with ``windows`` (N, 4) (x0, y0, w, h), each array's window only. Each window travels as it
    is (uint8 photos stay uint8) and is converted and resampled on the device: on a GPU machine whose CPU is slow
    per core, resampling 48 photos on the CPU took longer than the refinement steps that use them."""
    out = []
    for i, im in enumerate(imgs):
        if windows is not None:
            x0, y0, w, h = (int(x) for x in windows[i])
            im = im[y0:y0 + h, x0:x0 + w]
        t = torch.from_numpy(np.ascontiguousarray(im)).to(device).float()
        if t.ndim == 2:
            t = t[..., None]
        t = t.permute(2, 0, 1)[None]
        t = F.interpolate(t, size=size, mode="area")[0].permute(1, 2, 0)
        out.append(t)
    return torch.stack(out)


LEASH_EVERY = 5  # refinement steps between leash checks


def _pair_term(drawn: RenderWithPoints, pick: torch.Tensor, pj: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor,
               photos: torch.Tensor, masks: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The photo-consistency loss of one step: the views ``pick`` (B,), each against its neighbour ``pj`` (B,), at
    the level's windows (K (N, 3, 3), w2c (N, 4, 4), photos (N, h, w, 1) grey in [0, 1], masks (N, h, w)
    silhouette targets), from the step's render: its points of the views ``pick`` and, detached, of ``pj``.
    -> (loss, share of object pixels compared)."""
    pts, cover = drawn.points, drawn.covered
    with torch.no_grad():
        depth_j = project(drawn.more_points, K[pj], w2c[pj])[1] * drawn.more_covered
    # only what the silhouettes call object: a mesh too wide there compares table with table
    return pair_loss(pts, cover & (masks[pick] > 0.5), photos[pick], photos[pj], K[pj], w2c[pj], depth_j,
                     radius=radius, object_j=drawn.more_covered & (masks[pj] > 0.5))


def leash(verts: torch.Tensor, start: torch.Tensor, max_move: float) -> torch.Tensor | None:
    """``verts`` (V, 3) pulled back to within ``max_move`` of ``start`` (V, 3) along their displacement, or None
    when every vertex is within it already."""
    d = verts - start
    dist = d.norm(dim=1, keepdim=True)
    if not bool((dist > max_move).any()):
        return None
    return start + d * (max_move / dist.clamp_min(max_move))


def above_floor(verts: torch.Tensor, normal: torch.Tensor, height: float) -> torch.Tensor | None:
    """``verts`` (V, 3) with those below the plane ``normal . x = height`` (normal (3,) unit) moved straight up onto
    it, or None when every vertex is on or above it already."""
    below = height - verts @ normal
    if not bool((below > 0).any()):
        return None
    return verts + below.clamp_min(0)[:, None] * normal


def support_floor(support: tuple[np.ndarray, float], vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """The floor for :func:`refine` from the support plane (n (3,), d: n . x = d, the object on the side n points
    to) and the mesh the refinement starts from (V, 3): the plane itself, or lower where that mesh already reaches
    below it (the fused base is cut at the plane refitted to the dense points, which may lie a little lower).
    -> (unit normal (3,), height)."""
    n = np.asarray(support[0], dtype=np.float64)
    norm = float(np.linalg.norm(n))
    if norm == 0 or not np.isfinite(norm) or vertices.ndim != 2 or vertices.shape[1] != 3 or not len(vertices):
        raise ValueError(f"support_floor needs a non-zero normal and (V, 3) vertices, got {n} and {vertices.shape}")
    n, d = n / norm, float(support[1]) / norm
    return n, d + min(0.0, float((vertices @ n - d).min()))


def hold(verts: torch.Tensor, start: torch.Tensor, max_move: float,
         floor: tuple[torch.Tensor, float] | None) -> torch.Tensor | None:
    """:func:`leash` (when ``max_move`` > 0), then :func:`above_floor` (with a ``floor`` (normal, height)); None
    when neither moved a vertex."""
    held = leash(verts, start, max_move) if max_move > 0 else None
    if floor is not None:
        up = above_floor(verts if held is None else held, *floor)
        held = up if up is not None else held
    return held


def step_fraction(it: int, iters: int, final: float) -> float:
    """Cosine decay from 1 at ``it`` = 0 to ``final`` at the last iteration (``iters`` - 1)."""
    if iters <= 1:
        return 1.0
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * it / (iters - 1)))


def refine(vertices: np.ndarray, faces: np.ndarray, images: list[np.ndarray], masks: list[np.ndarray],
           Ks: np.ndarray, w2cs: np.ndarray, rasterizer: Rasterizer, settings: RefineSettings, device: str,
           check: Callable[[float], None] = lambda f: None,
           silhouette_weights: np.ndarray | None = None,
           floor: tuple[np.ndarray, float] | None = None,
           on_last_level: Callable[[np.ndarray, np.ndarray], None] | None = None) -> RefineResult:
    """Refine a closed mesh against posed views.

    vertices (V, 3) world units; faces (F, 3); images: N (H, W, 3) uint8; masks: N (H, W) bool, or float
    coverage in [0, 1] (see ``silhouette_targets``);
    Ks (N, 3, 3) pixels of those images; w2cs (N, 4, 4) OpenCV; silhouette_weights: optional (N,) factor on each
    view's silhouette loss (1 by default); floor: optional (normal (3,) unit, height), world units: no vertex ends
    below the plane normal . x = height (the table the object stands on: estimated silhouettes that hold its
    contact shadow otherwise pull the base under it, where nothing in the renders hides it); on_last_level: called
    with the last level's starting mesh (vertices (V, 3) world units, faces (F, 3) int64), whose faces the result
    keeps (the texture atlas is laid out from it meanwhile).
    """
    import time

    from largesteps.optimize import AdamUniform
    from largesteps.parameterize import from_differential, to_differential

    if len(images) != len(masks) or len(images) != len(Ks) or len(Ks) != len(w2cs):
        raise ValueError("refine: images, masks, Ks and w2cs must have the same length")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"refine: faces must be (F, 3), got {faces.shape}")
    if settings.crop and any(np.shape(m)[:2] != im.shape[:2] for m, im in zip(masks, images)):
        raise ValueError("refine: with crop, every mask must have its photo's size (their windows are shared)")
    if silhouette_weights is not None and len(silhouette_weights) != len(images):
        raise ValueError("refine: one silhouette weight per view")
    dev = torch.device(device)
    sil_w = torch.ones(len(images), device=dev) if silhouette_weights is None else torch.as_tensor(
        np.asarray(silhouette_weights), dtype=torch.float32, device=dev)
    gain = torch.ones((len(images), 3), device=dev, requires_grad=True)
    offset = torch.zeros((len(images), 3), device=dev, requires_grad=True)
    gopt = torch.optim.Adam([gain, offset], settings.gain_lr) if settings.view_gains else None
    c, s = normalisation(vertices)
    v = (vertices - c) * s
    floor_t = None
    if floor is not None:
        fn = np.asarray(floor[0], dtype=np.float64)
        if fn.shape != (3,) or abs(float(np.linalg.norm(fn)) - 1.0) > 1e-6:
            raise ValueError(f"refine: the floor's normal must be a unit (3,) vector, got {fn}")
        # n . x >= h in world units is n . x_n >= (h - n . c) s in the normalised ones
        floor_t = (torch.from_numpy(fn).float().to(dev), float((floor[1] - fn @ c) * s))
    f = np.asarray(faces)
    w2c_n = torch.from_numpy(normalise_cameras(np.asarray(w2cs), c, s)).float().to(dev)
    H0, W0 = images[0].shape[:2]  # every view is rendered at the first photo's aspect ratio
    colors = torch.full((len(v), 3), 0.5, device=dev)
    reg, reg_note = mesh_regulariser(settings)
    losses, secs, setup_secs, mesh_secs, pair_shares = [], [], [], [], []
    pair_on = settings.w_pair > 0 and len(images) > 1
    if pair_on:
        nb = pair_neighbours(w2c_n.cpu().numpy(), np.zeros(3))
        # a view with no neighbour compares with itself: the warp is then the identity, a zero loss and gradient
        nb = np.where(nb < 0, np.arange(len(nb))[:, None], nb)
        nbrs = torch.from_numpy(nb).to(dev)
    remesh_note = settings.remesh
    boxes = mask_boxes(masks) if settings.crop else None
    total_iters = sum(it for _, it in settings.levels)
    done_iters = 0
    vpstep = 0
    for li, (side, iters) in enumerate(settings.levels):
        t0 = time.monotonic()
        v, f, cols, note = grow_mesh(v, f, colors.detach().cpu().numpy(), li, settings)
        mesh_secs.append(time.monotonic() - t0)
        # a fallback (pymeshlab missing, a remesh refused) is what the summary reports, whichever level it was
        remesh_note = remesh_note if "no isotropic remesh" in remesh_note else note  # the first fallback is kept
        colors = torch.from_numpy(np.asarray(cols)).float().to(dev)
        if on_last_level is not None and li == len(settings.levels) - 1:
            on_last_level(v / s + c, np.asarray(f, dtype=np.int64))
        scale = side / max(H0, W0)
        size = (max(8, round(H0 * scale)), max(8, round(W0 * scale)))
        # the object's window of each photo (from the mesh this level starts with), or the whole photo
        windows = level_windows(images, masks, v / s + c, Ks, w2cs, size, settings.crop, boxes=boxes)
        K = torch.from_numpy(window_intrinsics(Ks, windows, size)).float().to(dev)
        tgt_raw = _resize_stack(images, size, dev, windows) / 255.0
        tgt_mask = _resize_stack([np.asarray(m) for m in masks], size, dev, windows)[..., 0]
        tgt_rgb = tgt_raw * tgt_mask[..., None]
        pair_level = (pair_on and li >= settings.pair_first_level
                      and (settings.pair_last_level < 0 or li <= settings.pair_last_level))
        # the photo-consistency term compares whole photos (not cut to the silhouettes), in grey
        pair_photos = blurred_gray(tgt_raw, settings.pair_blur) if pair_level else None
        del tgt_raw
        vt = torch.from_numpy(v).float().to(dev)
        ft = torch.from_numpy(f.astype(np.int64)).to(dev)
        M = parameterization_matrix(vt, ft, settings.lam * settings.lam_decay ** li)
        edge_target = mean_edge_length(v, f)
        u = to_differential(M, vt).clone().requires_grad_(True)
        colors = colors.clone().requires_grad_(True)
        opt = AdamUniform([u], settings.lr)
        copt = torch.optim.Adam([colors], settings.color_lr)
        faces32 = ft.int().contiguous()
        setup_secs.append(time.monotonic() - t0)
        n = len(images)
        # a set number of views, but never more than fit in the free memory
        fit = views_that_fit(n, size, dev)
        vpstep = min(settings.views_per_step, fit) if settings.views_per_step else fit
        gen = torch.Generator().manual_seed(li)
        # the level's view subsets drawn up front and uploaded once (a copy per step would wait on the GPU)
        picks = torch.stack([torch.randperm(n, generator=gen)[:vpstep] for _ in range(iters)]).to(dev)
        loss_val = float("nan")
        pair_share = None
        last = li == len(settings.levels) - 1
        for it in range(iters):
            if last and settings.lr_final != 1.0:
                opt.param_groups[0]["lr"] = settings.lr * step_fraction(it, iters, settings.lr_final)
            idx = picks[it]
            verts = from_differential(M, u, "Cholesky")
            # every few steps: a held vertex costs a second solve, and between checks a vertex moves a few steps'
            # worth at most (the level's end holds every vertex exactly)
            if (settings.max_move > 0 or floor_t is not None) and it % LEASH_EVERY == 0:
                with torch.no_grad():
                    held = hold(verts, vt, settings.max_move, floor_t)
                    if held is not None:
                        u.copy_(to_differential(M, held))
                if held is not None:
                    verts = from_differential(M, u, "Cholesky")
            cams = Cameras(K=K[idx], w2c=w2c_n[idx], size=size)
            drawn = None
            if pair_photos is not None:
                # the term's views are the step's first ones, each with one neighbour (in turn, by step): drawn in
                # the same rasterisation as the render
                pick = idx[:settings.pair_views]
                pj = nbrs[pick, it % nbrs.shape[1]]
                drawn = rasterizer.render_with_points(verts, faces32, colors.clamp(0, 1), cams, len(pick),
                                                      Cameras(K=K[pj], w2c=w2c_n[pj], size=size))
                rgb, alpha = drawn.rgb, drawn.alpha
            else:
                rgb, alpha = rasterizer.render(verts, faces32, colors.clamp(0, 1), cams)
            if gopt is not None:  # rgb is premultiplied by coverage, so the offset is too
                rgb = rgb * gain[idx][:, None, None, :] + offset[idx][:, None, None, :] * alpha[..., None]
            l_sil = (sil_w[idx][:, None, None] * (alpha - tgt_mask[idx]).abs()).mean()
            l_rgb = (rgb - tgt_rgb[idx]).abs().mean()
            loss = settings.w_silhouette * l_sil + settings.w_photo * l_rgb
            if drawn is not None:
                l_pair, pair_share = _pair_term(drawn, pick, pj, K, w2c_n, pair_photos, tgt_mask,
                                                settings.pair_radius)
                loss = loss + settings.w_pair * l_pair
            if reg is not None:
                loss = loss + reg(verts, ft, edge_target)
            opt.zero_grad()
            copt.zero_grad()
            if gopt is not None:
                gopt.zero_grad()
            loss.backward()
            opt.step()
            copt.step()
            if gopt is not None:
                gopt.step()
            done_iters += 1
            # reading the loss waits for the GPU: only every tenth step (and the last), so that the next steps'
            # kernels are queued while this one runs
            if it % 10 == 0 or it == iters - 1:
                loss_val = float(loss.detach())
                if not math.isfinite(loss_val):
                    raise FloatingPointError("refinement diverged (loss is not finite)")
                check(done_iters / total_iters)
        with torch.no_grad():
            verts = from_differential(M, u, "Cholesky").detach()
            held = hold(verts, vt, settings.max_move, floor_t)
            v = (verts if held is None else held).cpu().numpy().astype(np.float64)
        colors = colors.detach().clamp(0, 1)
        losses.append(loss_val)
        if pair_share is not None:
            pair_shares.append(round(float(pair_share), 4))
        secs.append(time.monotonic() - t0)
    return RefineResult(vertices=v / s + c, faces=f.astype(np.int64), colors=colors.cpu().numpy().astype(np.float32),
                        losses=tuple(losses), views_per_step=vpstep, seconds_per_level=tuple(secs),
                        setup_seconds_per_level=tuple(setup_secs), mesh_seconds_per_level=tuple(mesh_secs),
                        window_share=round(float(np.mean(windows[:, 2] / [im.shape[1] for im in images])), 4),
                        regularisers=reg_note, remesh=remesh_note, pair_share_per_level=tuple(pair_shares),
                        view_gains=(torch.cat([gain, offset], 1).detach().cpu().numpy().round(4).tolist()
                                    if gopt is not None else None))
