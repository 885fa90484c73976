"""Procedural benchmark objects that are not in the shared data: trimesh meshes with per-face colours.

Every object is a function ``f(seed=0, edge_scale=1.0) -> trimesh.Trimesh`` listed in ``OBJECTS``:

- ``bottle``: revolved, capped bottle (body, shoulder, neck, lip bead, cap) with a printed label band;
- ``relief_disc``: a 0.30 m disc, 3 cm thick, whose top carries 1-3 mm relief (rings, domes, letters, small bumps);
- ``armchair``: a 1.5 cm-radius tubular frame with a seat slab and a tilted back slab, a 10 cm gap between them;
- ``cup``: a revolved mug with a real cavity (inner wall, floor) and a handle (a partial torus);
- ``plain_vase``: a smooth revolved vase with a cavity, coloured almost uniformly (faint variation only);
- ``stool``: a seat disc on three thin splayed legs joined by a ring-shaped rung;
- ``lamp``: a desk lamp, a drum shade hanging from a thin stem and arm over a round base;
- ``bench``: a footstool of slabs with a hand slot through its top;
- ``bowl``: a wide, shallow bowl on a foot ring (a broad concave inside);
- ``picture_frame``: a thin frame with an open window, leaning on an easel leg;
- ``kettle``: a rounded body with a slanted spout and an arched handle over the lid.

Conventions: metres, +Z up, the lowest point on z = 0, 0.2-0.92 m largest extent, every object a closed (watertight,
consistently wound) solid. The ground-truth surface of an object is the mesh itself (the renderers write it to
``gt.ply``). Meshes are dense: the target edge length is ``size / 256`` (``size`` = largest extent), so when the
object spans 40 % of a 960 px wide photo (384 px) a face edge is about 1.5 px and colour detail survives.

How the shapes are made, and why:
- bottle and vase are exact surfaces of revolution (``trimesh.creation.revolve`` of a profile resampled to the
  edge length);
- the relief disc is a heightfield over a Delaunay triangulation of the disc, closed by a side wall and a bottom;
- objects made of several overlapping parts (armchair, stool, cup with its handle) are unions of signed distance
  functions (capsules = cylinders with spherical ends, rounded boxes and cylinders, tori; the cup body is the SDF
  of a revolved 2-D wall section) meshed by marching cubes
  (scikit-image, a project dependency). trimesh's boolean engine (manifold3d) is not installed here, and a plain
  concatenation of overlapping closed parts would put buried faces into the ground truth (they would count as
  surface that no reconstruction can recover); the SDF union is one watertight surface with the true genus.

Colours come from a seeded 3-D solid texture evaluated at face centres (multi-octave value noise mapped through a
palette, plus warped stripes, dots, patches and a fine grain), with palettes per object and per part, so multi-view stereo has
something to match; ``plain_vase`` is the deliberate exception (near-uniform colour).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import numpy as np
import trimesh

from bench.shapes import EDGE_FRACTION, ObjectInfo  # noqa: F401  (part of this module's interface: tests, make_sets)
from bench.shapes import (Part, arc, capsule, closed, describe, edge_length, on_ground, paint, revolve, rounded_box,
                          rounded_cylinder, sdf_union_mesh, torus_z)
from bench.solid_texture import Palette, TextureStyle, fbm, smoothstep, to_u8, value_noise


# ------------------------------------------------------------------------------------------------- objects
GLASS = Palette(stops=((0.06, 0.22, 0.12), (0.16, 0.42, 0.22), (0.38, 0.62, 0.36), (0.70, 0.80, 0.52)),
                accents=((0.92, 0.86, 0.55), (0.10, 0.12, 0.30), (0.80, 0.30, 0.15), (0.95, 0.95, 0.90)))
CAP = Palette(stops=((0.45, 0.08, 0.06), (0.75, 0.20, 0.12), (0.95, 0.70, 0.35)),
              accents=((0.98, 0.90, 0.40), (0.15, 0.10, 0.10), (0.95, 0.95, 0.95)))


def _label_colours(points: np.ndarray, radius: float, z0: float, z1: float, seed: int) -> np.ndarray:
    """A printed paper label on a cylinder of ``radius`` between z0 and z1: cream paper, a red title band, rows of
    dark 'words', a coloured emblem and thin rules. ``points`` (n, 3) -> colours (n, 3)."""
    rng = np.random.default_rng(seed)
    s = np.arctan2(points[:, 1], points[:, 0]) * radius         # arc length around the body
    z = points[:, 2]
    h = z1 - z0
    paper = np.array([0.93, 0.89, 0.78])
    grain = fbm(points, 0.01, 3, seed) - 0.5
    col = paper[None] * (1 + 0.12 * grain[:, None])
    title = (z > z0 + 0.68 * h) & (z < z0 + 0.9 * h)
    col[title] = np.array([0.72, 0.12, 0.10]) * (1 + 0.2 * (fbm(points[title], 0.02, 3, seed + 1)[:, None] - 0.5))
    # title letters: pale blocks of varying width on the band
    letters = np.mod(s / 0.011 + 0.35 * np.floor(s / 0.05), 1.0) < 0.55
    lrow = (z > z0 + 0.72 * h) & (z < z0 + 0.86 * h)
    col[title & letters & lrow] = (0.97, 0.93, 0.80)
    # text rows: words = runs along s where a 1-D noise along s is high, different per row
    row_h = 0.0055
    row = np.floor((z - z0) / row_h).astype(np.int64)
    in_row = np.mod((z - z0) / row_h, 1.0) < 0.55
    body = (z > z0 + 0.1 * h) & (z < z0 + 0.6 * h)
    word = value_noise(np.c_[s / 0.006, row * 7.31, np.zeros_like(s)], seed + 2) > 0.45
    col[body & in_row & word] = (0.12, 0.12, 0.16)
    # emblem: a coloured disc with a ring, at a random angle
    a0 = rng.uniform(-math.pi, math.pi) * radius
    ds = np.mod(s - a0 + math.pi * radius, 2 * math.pi * radius) - math.pi * radius
    dz = z - (z0 + 0.35 * h)
    rr = np.hypot(ds, dz)
    col[(rr < 0.016) & body] = (0.15, 0.35, 0.70)
    col[(rr > 0.010) & (rr < 0.012)] = (0.98, 0.80, 0.20)
    # thin rules at the label's top and bottom edges
    col[(np.abs(z - z0 - 0.04 * h) < 0.0012) | (np.abs(z - z1 + 0.04 * h) < 0.0012)] = (0.55, 0.42, 0.10)
    return np.clip(col, 0, 1)


def bottle(seed: int = 0, edge_scale: float = 1.0) -> trimesh.Trimesh:
    """A capped 0.33 m bottle (body radius 42 mm): body, shoulder, neck, lip bead, cap; label band z 0.07-0.17."""
    size = 0.33
    e = edge_length(size, edge_scale)
    rb, rn = 0.042, 0.0145
    z_sh0, z_sh1 = 0.20, 0.262                                  # shoulder from body to neck
    t = np.linspace(0, 1, 64)
    shoulder = np.c_[rn + (rb - rn) * (0.5 + 0.5 * np.cos(math.pi * t)), z_sh0 + (z_sh1 - z_sh0) * t]
    profile = np.concatenate([
        [[0.0, 0.004]], [[0.022, 0.002]],                      # slightly domed-in base (a shallow punt)
        arc((rb - 0.006, 0.006), 0.006, -math.pi / 2, 0.0, 24),  # base fillet
        shoulder,
        [[rn, 0.292]],                                          # neck
        arc((rn, 0.2955), 0.0035, -math.pi / 2, math.pi / 2, 24),  # lip bead (a half torus)
        [[0.0152, 0.299]], [[0.0152, 0.321]],                   # cap skirt
        arc((0.0122, 0.321), 0.003, 0.0, math.pi / 2, 16),     # rounded cap edge
        [[0.0, 0.324]],
    ])
    mesh = on_ground(revolve(profile, e, "bottle"))
    c = mesh.triangles_center
    labels = np.where(c[:, 2] > 0.2985, 1, 0)
    mesh = paint(mesh, labels, {0: (GLASS, TextureStyle()), 1: (CAP, TextureStyle(cell=1 / 12))}, seed)
    # the label: only on the cylindrical body, overprinted on the glass colours
    z0, z1 = 0.07, 0.17
    sel = (c[:, 2] > z0) & (c[:, 2] < z1) & (np.hypot(c[:, 0], c[:, 1]) > rb - 0.001)
    fc = mesh.visual.face_colors.copy()
    fc[sel] = to_u8(_label_colours(c[sel], rb, z0, z1, seed * 31 + 5))
    mesh.visual.face_colors = fc
    return mesh


STONE = Palette(stops=((0.30, 0.22, 0.14), (0.55, 0.42, 0.26), (0.78, 0.66, 0.45), (0.92, 0.85, 0.66)),
                accents=((0.20, 0.30, 0.45), (0.60, 0.16, 0.10), (0.95, 0.92, 0.80), (0.12, 0.10, 0.08)))


def _relief_height(xy: np.ndarray) -> np.ndarray:
    """Relief above the disc top (metres, 0..3 mm) at points xy (n, 2): two raised rings near the rim, a ring of
    24 domes, an inner ring, the raised words 'HOTMESH' (2.5 mm) and 'RELIEF 3D' (1 mm), and small bumps."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont
    from scipy.ndimage import map_coordinates

    r = np.hypot(xy[:, 0], xy[:, 1])
    h = np.zeros(len(xy))

    def ring(rc: float, width: float, height: float) -> np.ndarray:
        t = np.abs(r - rc) / (width / 2)
        return height * (1 - smoothstep(0.55, 1.0, t))          # flat top, sloped sides

    for rc, width, height in ((0.132, 0.004, 0.002), (0.124, 0.0025, 0.0012), (0.058, 0.003, 0.0015)):
        h = np.maximum(h, ring(rc, width, height))
    for k in range(24):                                         # domes: spherical caps 3 mm high, 4.5 mm radius
        a = 2 * math.pi * k / 24
        d = np.hypot(xy[:, 0] - 0.105 * math.cos(a), xy[:, 1] - 0.105 * math.sin(a))
        h = np.maximum(h, 0.003 * np.sqrt(np.clip(1 - (d / 0.0045) ** 2, 0, 1)))
    rng = np.random.default_rng(1234)                           # fixed: the geometry does not depend on the seed
    for _ in range(90):                                         # small bumps, 1-2 mm, between the rings
        a = rng.uniform(0, 2 * math.pi)
        rc = rng.uniform(0.068, 0.094)
        rad, height = rng.uniform(0.0015, 0.003), rng.uniform(0.001, 0.002)
        d = np.hypot(xy[:, 0] - rc * math.cos(a), xy[:, 1] - rc * math.sin(a))
        h = np.maximum(h, height * (1 - smoothstep(0.3, 1.0, d / rad)))
    # letters: rasterised at 0.2 mm / px, blurred so that their sides slope over ~1 mm, sampled bilinearly;
    # each line in its own image so the big letters' blurred edges do not become 1 mm shelves
    px = 0.0002
    n = int(0.11 / px)
    cols = (xy[:, 0] + 0.055) / px
    rows = (0.055 - xy[:, 1]) / px
    lines = (("HOTMESH", 0.016, 0.024, 0.088, 0.0025), ("RELIEF 3D", -0.022, 0.013, 0.07, 0.001))
    for text, y, cap, max_w, height in lines:       # text, centre y, cap height, max width, relief (m)
        img = Image.new("L", (n, n), 0)
        draw = ImageDraw.Draw(img)
        size_px = int(cap / px)
        font = ImageFont.load_default(size=size_px)
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font, stroke_width=size_px // 16)
        if x1 - x0 > max_w / px:                              # too wide for the inner ring: shrink to fit
            size_px = int(size_px * max_w / px / (x1 - x0))
            font = ImageFont.load_default(size=size_px)
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font, stroke_width=size_px // 16)
        draw.text((n / 2 - (x0 + x1) / 2, n / 2 - y / px - (y0 + y1) / 2), text, fill=255, font=font,
                  stroke_width=size_px // 16, stroke_fill=255)
        arr = np.asarray(img.filter(ImageFilter.GaussianBlur(0.0006 / px)), float) / 255.0
        lv = map_coordinates(arr, [rows, cols], order=1, mode="constant", cval=0.0)
        h = np.maximum(h, height * np.clip((lv - 0.3) / 0.4, 0, 1))
    return h


def _disc_points(radius: float, spacing: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Points (n, 2) of a disc: ``nb`` boundary points on the circle first (counter-clockwise), then a jittered
    triangular lattice strictly inside. Returns (points, nb)."""
    nb = max(16, math.ceil(2 * math.pi * radius / spacing))
    a = 2 * math.pi * np.arange(nb) / nb
    boundary = radius * np.c_[np.cos(a), np.sin(a)]
    dy = spacing * math.sqrt(3) / 2
    ys = np.arange(-radius, radius + dy, dy)
    xs = np.arange(-radius, radius + spacing, spacing)
    gx, gy = np.meshgrid(xs, ys)
    gx = gx + (np.arange(len(ys))[:, None] % 2) * spacing / 2
    inner = np.c_[gx.ravel(), gy.ravel()] + rng.uniform(-0.05, 0.05, (gx.size, 2)) * spacing
    inner = inner[np.hypot(inner[:, 0], inner[:, 1]) < radius - 0.6 * spacing]
    return np.concatenate([boundary, inner]), nb


def _disc_triangles(xy: np.ndarray, up: bool) -> np.ndarray:
    """Delaunay triangles (m, 3) of disc points, wound so that their normal is +Z (``up``) or -Z."""
    from scipy.spatial import Delaunay

    tri = Delaunay(xy).simplices
    p = xy[tri]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    area2 = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    flip = (area2 < 0) if up else (area2 > 0)
    tri[flip] = tri[flip][:, ::-1]
    return tri[np.abs(area2) > 1e-14]


def relief_disc(seed: int = 0, edge_scale: float = 1.0) -> trimesh.Trimesh:
    """A 0.30 m disc, 30 mm thick, whose top carries 1-3 mm relief (rings, domes, letters, bumps).

    The top is a heightfield over a Delaunay triangulation with 0.8 mm spacing (finer than size/256 so that the
    relief's sloped sides are resolved), the bottom uses twice that spacing, the side wall joins them."""
    R, T = 0.15, 0.03
    s_top = 0.0008 * edge_scale
    rng = np.random.default_rng(7)
    top_xy, nb = _disc_points(R, s_top, rng)
    top_tri = _disc_triangles(top_xy, up=True)
    top = np.c_[top_xy, T + _relief_height(top_xy)]
    # bottom: same boundary points (so the wall closes), coarser interior
    bot_xy, nb2 = _disc_points(R, 2 * s_top, rng)
    bot_xy = np.concatenate([top_xy[:nb], bot_xy[nb2:]])
    bot_tri = _disc_triangles(bot_xy, up=False)
    nz = max(1, math.ceil(T / s_top))
    a = 2 * math.pi * np.arange(nb) / nb
    mid_z = T - T * np.arange(1, nz) / nz                      # wall rings strictly between top and bottom
    mid = np.zeros((0, 3))
    if nz > 1:
        mid = np.concatenate([np.c_[R * np.cos(a), R * np.sin(a), np.full(nb, z)] for z in mid_z])
    n_top, n_mid = len(top), len(mid)
    verts = np.concatenate([top, mid, np.c_[bot_xy, np.zeros(len(bot_xy))]])
    rings = [np.arange(nb)] + [n_top + k * nb + np.arange(nb) for k in range(nz - 1)] + [n_top + n_mid + np.arange(nb)]
    wall = []
    for upper, lower in pairwise(rings):
        u1, l1 = np.roll(upper, -1), np.roll(lower, -1)
        wall += [np.c_[upper, lower, u1], np.c_[u1, lower, l1]]   # outward for counter-clockwise rings
    faces = np.concatenate([top_tri, np.concatenate(wall), bot_tri + n_top + n_mid])
    mesh = closed(trimesh.Trimesh(verts, faces, process=True), "relief_disc")
    # colours: stone noise everywhere, the raised relief tinted like worn gilding (strongest on the highest parts)
    c = mesh.triangles_center
    mesh = paint(mesh, np.zeros(len(mesh.faces), np.int64), {0: (STONE, TextureStyle(cell=1 / 6))}, seed)
    lift = np.clip((c[:, 2] - T) / 0.002, 0, 1) * (np.hypot(c[:, 0], c[:, 1]) < R - 1e-4)
    gild = np.array([0.86, 0.68, 0.25]) * (0.8 + 0.4 * fbm(c, 0.01, 3, seed + 17)[:, None])
    rgb = mesh.visual.face_colors[:, :3] / 255.0
    mesh.visual.face_colors = to_u8(rgb * (1 - 0.7 * lift[:, None]) + 0.7 * lift[:, None] * gild)
    return mesh


FRAME = Palette(stops=((0.10, 0.12, 0.16), (0.30, 0.34, 0.42), (0.60, 0.64, 0.70)),
                accents=((0.85, 0.55, 0.20), (0.90, 0.90, 0.85), (0.20, 0.45, 0.70)))
FABRIC = Palette(stops=((0.25, 0.10, 0.12), (0.55, 0.22, 0.20), (0.82, 0.52, 0.36), (0.95, 0.85, 0.65)),
                 accents=((0.15, 0.30, 0.50), (0.95, 0.92, 0.80), (0.20, 0.45, 0.25), (0.10, 0.08, 0.08)))

# armchair dimensions (metres): frame centre lines
CHAIR_W, CHAIR_D, CHAIR_SEAT_Z, CHAIR_TUBE = 0.62, 0.56, 0.40, 0.015
CHAIR_SEAT_TOP = CHAIR_SEAT_Z + CHAIR_TUBE + 0.045 - 0.005   # top of the seat slab
CHAIR_BACK_BOTTOM = 0.56                                       # lowest edge of the back slab (gap ~10 cm)


def armchair(seed: int = 0, edge_scale: float = 1.0) -> trimesh.Trimesh:
    """A 0.65 x 0.69 x 0.92 m armchair: tubular frame (1.5 cm tubes, capsules joined at the corners), seat slab on
    the frame, a back slab between the tilted back posts starting 10 cm above the seat, tube armrests and side
    stretchers. Front is -Y. Part labels: 0 frame, 1 slabs."""
    W, D, zs, rt = CHAIR_W, CHAIR_D, CHAIR_SEAT_Z, CHAIR_TUBE
    x, y = W / 2, D / 2
    post_top = np.array([0.0, y + 0.10, 0.90])
    parts: list[Part] = []

    def tube(a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> None:
        parts.append(capsule(np.asarray(a, float), np.asarray(b, float), rt, 0))

    for sx in (-1, 1):
        tube([sx * x, -y, rt], [sx * x, -y, zs])                # front leg (the end sphere stands on z = 0)
        tube([sx * x, y, rt], [sx * x, y, zs])                  # rear leg
        tube([sx * x, -y, 0.12], [sx * x, y, 0.12])             # side stretcher
        tube([sx * x, -y, zs], [sx * x, y, zs])                 # seat side rail
        top = np.array([sx * x, post_top[1], post_top[2]])
        tube([sx * x, y, zs], top)                              # back post, tilted back
        arm_back = np.array([sx * x, y, zs]) + (top - [sx * x, y, zs]) * (0.63 - zs) / (top[2] - zs)
        tube([sx * x, -y, zs], [sx * x, -y + 0.03, 0.63])       # arm post
        tube([sx * x, -y + 0.03, 0.63], arm_back)               # armrest
    tube([-x, -y, zs], [x, -y, zs])                             # front rail
    tube([-x, y, zs], [x, y, zs])                               # back rail
    tube([-x, post_top[1], post_top[2]], [x, post_top[1], post_top[2]])  # top rail
    # seat slab: rests on the rails (its bottom 5 mm into them so the union is connected)
    seat_half = np.array([x - 0.005, y - 0.005, 0.0225])
    parts.append(rounded_box([0, 0, zs + rt - 0.005 + seat_half[2]], np.eye(3), seat_half, 0.008, 1))
    # back slab: in the plane of the back posts, thicker than the tubes so it wraps them
    along = post_top - [0, y, zs]
    along /= np.linalg.norm(along)
    normal = np.cross([1.0, 0, 0], along)
    t0 = (CHAIR_BACK_BOTTOM - zs) / along[2]
    t1 = (0.86 - zs) / along[2]
    centre = np.array([0, y, zs]) + along * (t0 + t1) / 2
    parts.append(rounded_box(centre, np.array([[1.0, 0, 0], along, normal]),
                             np.array([x + 0.004, (t1 - t0) / 2, 0.0185]), 0.008, 1))
    voxel = edge_length(0.92, edge_scale)
    mesh, labels = sdf_union_mesh(parts, voxel, "armchair")
    mesh = on_ground(mesh)
    return paint(mesh, labels, {0: (FRAME, TextureStyle(cell=1 / 10)), 1: (FABRIC, TextureStyle())}, seed)


CERAMIC = Palette(stops=((0.75, 0.80, 0.88), (0.45, 0.55, 0.72), (0.20, 0.28, 0.50), (0.93, 0.90, 0.82)),
                  accents=((0.95, 0.75, 0.20), (0.70, 0.15, 0.20), (0.98, 0.97, 0.92), (0.10, 0.15, 0.25)))
HANDLE = Palette(stops=((0.85, 0.60, 0.20), (0.60, 0.30, 0.10), (0.95, 0.85, 0.55)),
                 accents=((0.20, 0.28, 0.50), (0.98, 0.97, 0.92)))

# cup dimensions (metres)
CUP_R, CUP_H, CUP_WALL, CUP_FLOOR = 0.065, 0.17, 0.007, 0.012


def cup(seed: int = 0, edge_scale: float = 1.0) -> trimesh.Trimesh:
    """A 0.17 m tall mug (outer radius 65 mm, 7 mm wall with a rounded lip, 12 mm floor) with a handle: a torus
    section (major radius 45 mm, tube radius 9 mm) whose ends sink into the wall. Handle on +X. Labels: 0 body,
    1 handle."""
    R, H, w, f = CUP_R, CUP_H, CUP_WALL, CUP_FLOOR

    def box2(q: np.ndarray, half: np.ndarray, rounding: float) -> np.ndarray:
        d = np.abs(q) - (half - rounding)
        return np.linalg.norm(np.maximum(d, 0), axis=1) + np.minimum(d.max(1), 0) - rounding

    def body(p: np.ndarray) -> np.ndarray:
        q = np.c_[np.hypot(p[:, 0], p[:, 1]), p[:, 2]]
        outer = np.maximum(box2(q - [0, H / 2 + 0.05], np.array([R, H / 2 + 0.05]), 0.01), q[:, 1] - (H - w / 2))
        cavity = box2(q - [0, (f + H + 0.1) / 2], np.array([R - w, (H + 0.1 - f) / 2]), 0.008)
        lip = np.hypot(q[:, 0] - (R - w / 2), q[:, 1] - (H - w / 2)) - w / 2
        return np.minimum(np.maximum(outer, -cavity), lip)

    x0, z0, major, minor = R + 0.012, 0.085, 0.045, 0.009

    def handle(p: np.ndarray) -> np.ndarray:
        torus = np.hypot(np.hypot(p[:, 0] - x0, p[:, 2] - z0) - major, p[:, 1]) - minor
        return np.maximum(torus, (R - w / 2) - p[:, 0])         # cut inside the wall, never into the cavity

    parts = [Part(body, np.array([-R, -R, 0.0]), np.array([R, R, H]), 0),
             Part(handle, np.array([R - w, -minor, z0 - major - minor]),
                  np.array([x0 + major + minor, minor, z0 + major + minor]), 1)]
    mesh, labels = sdf_union_mesh(parts, edge_length(0.2, edge_scale), "cup")
    mesh.apply_translation([0, 0, -mesh.bounds[0][2]])          # keep the cup axis on x = y = 0
    return paint(mesh, labels, {0: (CERAMIC, TextureStyle()), 1: (HANDLE, TextureStyle(cell=1 / 10))}, seed)


CELADON = Palette(stops=((0.72, 0.78, 0.70),), accents=((0.72, 0.78, 0.70),))


def plain_vase(seed: int = 0, edge_scale: float = 1.0) -> trimesh.Trimesh:
    """A smooth 0.36 m vase (max radius ~98 mm, 5 mm wall, flared rounded lip, 15 mm floor) in a near-uniform
    celadon glaze: the untextured-surface test (colour varies by about +-2.5 %)."""
    from scipy.interpolate import PchipInterpolator

    H, wall, floor = 0.36, 0.005, 0.015
    ctrl_t = [0.0, 0.08, 0.33, 0.6, 0.82, 0.95, 1.0]
    ctrl_r = [0.055, 0.074, 0.098, 0.078, 0.037, 0.043, 0.050]
    ro = PchipInterpolator(np.array(ctrl_t) * H, ctrl_r)
    z_top = H - wall / 2
    zs = np.linspace(0.008, z_top, 200)     # dense enough for the spline, resampled to the edge
    outer = np.c_[ro(zs), zs]
    zi = np.linspace(z_top, floor + 0.008, 200)
    inner = np.c_[ro(zi) - wall, zi]
    profile = np.concatenate([
        [[0.0, 0.0]], arc((float(ro(0.008)) - 0.008, 0.008), 0.008, -math.pi / 2, 0.0, 16)[:-1],
        outer,
        arc((float(ro(z_top)) - wall / 2, z_top), wall / 2, 0.0, math.pi, 24)[1:-1],   # rounded lip
        inner,
        arc((float(ro(floor + 0.008)) - wall - 0.008, floor + 0.008), 0.008, 0.0, -math.pi / 2, 16)[1:],
        [[0.0, floor]],
    ])
    mesh = on_ground(revolve(profile, edge_length(H, edge_scale), "plain_vase"))
    return paint(mesh, np.zeros(len(mesh.faces), np.int64), {0: (CELADON, TextureStyle(plain=True))}, seed)


WOOD = Palette(stops=((0.35, 0.18, 0.08), (0.58, 0.34, 0.16), (0.80, 0.58, 0.32), (0.93, 0.80, 0.55)),
               accents=((0.15, 0.08, 0.04), (0.95, 0.88, 0.70), (0.70, 0.20, 0.12), (0.20, 0.35, 0.30)))
PAINT = Palette(stops=((0.55, 0.05, 0.05), (0.80, 0.15, 0.10), (0.95, 0.45, 0.25)),
                accents=((0.98, 0.90, 0.60), (0.10, 0.10, 0.12), (0.30, 0.45, 0.75)))

# stool dimensions (metres)
STOOL_H, STOOL_SEAT_R, STOOL_LEG_R, STOOL_RUNG_Z, STOOL_RUNG_R = 0.45, 0.16, 0.013, 0.16, 0.009


def stool(seed: int = 0, edge_scale: float = 1.0) -> trimesh.Trimesh:
    """A 0.45 m stool: a 32 cm seat disc (35 mm thick, rounded rim) on three splayed 13 mm-radius legs, joined by
    a ring-shaped rung (9 mm tube) at 16 cm. Labels: 0 seat, 1 legs and rung."""
    H, rs, rl = STOOL_H, STOOL_SEAT_R, STOOL_LEG_R
    parts = [rounded_cylinder([0, 0, H - 0.0175], rs, 0.0175, 0.006, 0)]
    foot_r, top_r, top_z = 0.165, 0.10, H - 0.02      # leg tops end inside the seat
    for k in range(3):
        a = 2 * math.pi * k / 3 + math.pi / 2
        u = np.array([math.cos(a), math.sin(a), 0.0])
        parts.append(capsule(u * foot_r + [0, 0, rl], u * top_r + [0, 0, top_z], rl, 1))
    # the ring runs through the legs' axes at the rung height
    ring_r = foot_r + (top_r - foot_r) * (STOOL_RUNG_Z - rl) / (top_z - rl)
    parts.append(torus_z([0, 0, STOOL_RUNG_Z], ring_r, STOOL_RUNG_R, 1))
    mesh, labels = sdf_union_mesh(parts, edge_length(H, edge_scale), "stool")
    mesh.apply_translation([0, 0, -mesh.bounds[0][2]])
    return paint(mesh, labels, {0: (WOOD, TextureStyle()), 1: (PAINT, TextureStyle(cell=1 / 10))}, seed)


BRASS = Palette(stops=((0.30, 0.20, 0.06), (0.62, 0.46, 0.16), (0.86, 0.72, 0.38), (0.97, 0.90, 0.66)),
                accents=((0.12, 0.10, 0.08), (0.95, 0.95, 0.90), (0.20, 0.40, 0.55)))
LINEN = Palette(stops=((0.20, 0.30, 0.26), (0.42, 0.58, 0.50), (0.78, 0.84, 0.74), (0.96, 0.94, 0.86)),
                accents=((0.80, 0.30, 0.20), (0.15, 0.18, 0.30), (0.98, 0.85, 0.35)))

# desk lamp dimensions (metres)
LAMP_BASE_R, LAMP_STEM_TOP, LAMP_TUBE_R, LAMP_SHADE_R = 0.075, 0.36, 0.0065, 0.07


def lamp(seed: int = 0, edge_scale: float = 1.0) -> trimesh.Trimesh:
    """A 0.39 m desk lamp: a round base (75 mm radius, 24 mm thick) with a thin stem (6.5 mm tube) rising off
    centre to 0.36 m, an arm reaching out over the base's edge, and a drum shade (70 mm radius, 80 mm tall) hanging
    from it, so that the table is seen under the shade and on both sides of the stem. Labels: 0 base, stem and
    arm, 1 shade."""
    rb, top, rt, rsh = LAMP_BASE_R, LAMP_STEM_TOP, LAMP_TUBE_R, LAMP_SHADE_R
    stem_foot = np.array([-0.035, 0.0, 0.02])
    stem_top = np.array([-0.035, 0.0, top])
    shade_c = np.array([0.10, 0.0, top - 0.02])
    parts = [rounded_cylinder([0, 0, 0.012], rb, 0.012, 0.005, 0),
             capsule(stem_foot, stem_top, rt, 0),
             capsule(stem_top, shade_c + [0, 0, 0.045], rt, 0),           # the arm ends inside the shade's top
             rounded_cylinder(shade_c, rsh, 0.04, 0.008, 1)]
    mesh, labels = sdf_union_mesh(parts, edge_length(0.42, edge_scale), "lamp")
    mesh = on_ground(mesh)
    return paint(mesh, labels, {0: (BRASS, TextureStyle(cell=1 / 8)), 1: (LINEN, TextureStyle())}, seed)


OAK = Palette(stops=((0.30, 0.17, 0.07), (0.52, 0.32, 0.14), (0.74, 0.54, 0.30), (0.90, 0.76, 0.52)),
              accents=((0.12, 0.07, 0.03), (0.96, 0.90, 0.72), (0.25, 0.40, 0.55)))

# bench dimensions (metres)
BENCH_W, BENCH_D, BENCH_H, BENCH_SLAB = 0.36, 0.14, 0.16, 0.022


def bench(seed: int = 0, edge_scale: float = 1.0) -> trimesh.Trimesh:
    """A 0.36 m long, 0.16 m tall footstool of slabs: a top slab (22 mm) on two slab legs set in from its ends, with
    a hand slot (0.10 x 0.03 m) through the top, so the table shows under the top, between the legs, and through
    the slot. Labels: 0 every slab."""
    W, D, H, t = BENCH_W, BENCH_D, BENCH_H, BENCH_SLAB
    slab = np.array([W / 2, D / 2, t / 2])
    leg = np.array([t / 2, D / 2 - 0.004, (H - t) / 2 + 0.004])
    parts = [rounded_box([0, 0, H - t / 2], np.eye(3), slab, 0.005, 0)]
    for sx in (-1, 1):
        parts.append(rounded_box([sx * (W / 2 - 0.05), 0, (H - t) / 2], np.eye(3), leg, 0.004, 0))
    top = parts[0]
    slot_half = np.array([0.05, 0.015, t])

    def with_slot(p: np.ndarray) -> np.ndarray:
        q = np.abs(p - [0, 0, H - t / 2]) - slot_half
        slot = np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0)
        return np.maximum(top.sdf(p), -slot)

    parts[0] = Part(with_slot, top.lo, top.hi, 0)
    mesh, labels = sdf_union_mesh(parts, edge_length(W, edge_scale), "bench")
    mesh = on_ground(mesh)
    return paint(mesh, labels, {0: (OAK, TextureStyle())}, seed)


GLAZE = Palette(stops=((0.10, 0.22, 0.30), (0.18, 0.40, 0.48), (0.55, 0.70, 0.66), (0.92, 0.88, 0.78)),
                accents=((0.85, 0.45, 0.15), (0.95, 0.93, 0.85), (0.35, 0.12, 0.10), (0.10, 0.10, 0.12)))

# bowl dimensions (metres)
BOWL_R, BOWL_H, BOWL_WALL, BOWL_FOOT_R, BOWL_FOOT_H = 0.12, 0.075, 0.006, 0.05, 0.012


def bowl(seed: int = 0, edge_scale: float = 1.0) -> trimesh.Trimesh:
    """A wide 0.24 m bowl, 75 mm tall (6 mm wall, rounded lip), on a 12 mm foot ring: the inside is a broad concave
    surface seen from above, and the hollow under the foot is closed off from every view. Labels: 0 everything."""
    R, H, w, rf, hf = BOWL_R, BOWL_H, BOWL_WALL, BOWL_FOOT_R, BOWL_FOOT_H
    t = np.linspace(0.0, 1.0, 64)
    # the outer wall: a quarter ellipse from the foot up to the rim; the inner one the same, the wall inside it
    outer = np.c_[rf + (R - rf) * np.sin(t * math.pi / 2), hf + (H - w / 2 - hf) * (1 - np.cos(t * math.pi / 2))]
    inner = np.c_[(rf - w) + (R - w - rf + w) * np.sin(t * math.pi / 2),
                  (hf + w) + (H - w / 2 - hf - w) * (1 - np.cos(t * math.pi / 2))][::-1]
    profile = np.concatenate([
        [[0.0, hf - 0.004]], [[rf - 0.008, hf - 0.004]],      # the underside inside the foot ring, 4 mm up
        [[rf - 0.008, 0.0]], [[rf, 0.0]],                       # the foot ring (8 mm wide) standing on the table
        outer[1:],
        arc((R - w / 2, H - w / 2), w / 2, 0.0, math.pi, 16)[1:-1],   # rounded lip
        inner[:-1],
        [[0.0, hf + w]],
    ])
    mesh = on_ground(revolve(profile, edge_length(2 * R, edge_scale), "bowl", axis_gap=0.004))
    return paint(mesh, np.zeros(len(mesh.faces), np.int64), {0: (GLAZE, TextureStyle())}, seed)


# picture frame dimensions (metres)
FRAME_W, FRAME_H, FRAME_T, FRAME_BORDER, FRAME_TILT = 0.22, 0.28, 0.016, 0.045, math.radians(14)


def picture_frame(seed: int = 0, edge_scale: float = 1.0) -> trimesh.Trimesh:
    """A 0.22 x 0.28 m picture frame, 16 mm thick, with an open window (45 mm border), leaning back 14 degrees on
    its bottom edge and held by an easel leg (a 40 x 8 mm strut from its back to the table): a thin slab, a hole the
    room shows through, and a gap under the leg. Front is -Y. Labels: 0 frame, 1 leg."""
    W, H, T, b = FRAME_W, FRAME_H, FRAME_T, FRAME_BORDER
    up = np.array([0.0, math.sin(FRAME_TILT), math.cos(FRAME_TILT)])      # leaning back, towards +Y
    normal = np.cross([1.0, 0.0, 0.0], up)                                # (0, -cos, sin): out of the front
    axes = np.array([[1.0, 0.0, 0.0], up, normal])
    centre = up * H / 2
    board = rounded_box(centre, axes, np.array([W / 2, H / 2, T / 2]), 0.004, 0)
    window = np.array([W / 2 - b, H / 2 - b, T])

    def with_window(p: np.ndarray) -> np.ndarray:
        q = np.abs((p - centre) @ axes.T) - window
        hole = np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0)
        return np.maximum(board.sdf(p), -hole)

    back = -normal
    top = centre + up * (H / 2 - b / 2) + back * (T / 2 - 0.002)          # inside the top border, from the back
    foot = np.array([0.0, top[1] + 0.5 * top[2], 0.004])
    leg_axis = (foot - top) / np.linalg.norm(foot - top)
    leg_n = np.cross([1.0, 0.0, 0.0], leg_axis)
    leg_len = float(np.linalg.norm(foot - top))
    leg = rounded_box((top + foot) / 2, np.array([[1.0, 0.0, 0.0], leg_axis, leg_n]),
                      np.array([0.020, leg_len / 2, 0.004]), 0.002, 1)
    parts = [Part(with_window, board.lo, board.hi, 0), leg]
    mesh, labels = sdf_union_mesh(parts, edge_length(H, edge_scale), "picture_frame")
    mesh = on_ground(mesh)
    return paint(mesh, labels, {0: (OAK, TextureStyle(cell=1 / 10)), 1: (WOOD, TextureStyle(cell=1 / 10))}, seed)


ENAMEL = Palette(stops=((0.55, 0.08, 0.06), (0.78, 0.18, 0.10), (0.92, 0.50, 0.30), (0.98, 0.85, 0.70)),
                 accents=((0.98, 0.96, 0.90), (0.10, 0.10, 0.12), (0.90, 0.75, 0.20), (0.20, 0.35, 0.55)))


def kettle(seed: int = 0, edge_scale: float = 1.0) -> trimesh.Trimesh:
    """A 0.25 m kettle: a rounded body (radius 85 mm, 130 mm tall), a slanted 9 mm spout on -X, an arched handle
    over the lid (a half torus, 10 mm tube, the room seen through it) and a lid knob. Labels: 0 body and spout,
    1 handle and knob."""
    zc = 0.075
    parts = [rounded_cylinder([0, 0, zc], 0.085, 0.065, 0.035, 0),
             capsule(np.array([-0.06, 0.0, 0.05]), np.array([-0.135, 0.0, 0.145]), 0.009, 0),
             rounded_cylinder([0, 0, 0.144], 0.022, 0.006, 0.003, 1)]
    major, minor, zh = 0.06, 0.010, 0.13

    def arch(p: np.ndarray) -> np.ndarray:
        torus = np.hypot(np.hypot(p[:, 1], p[:, 2] - zh) - major, p[:, 0]) - minor
        return np.maximum(torus, zh - p[:, 2])                            # the upper half, ends in the body

    parts.append(Part(arch, np.array([-minor, -major - minor, zh - 0.01]),
                      np.array([minor, major + minor, zh + major + minor]), 1))
    mesh, labels = sdf_union_mesh(parts, edge_length(0.25, edge_scale), "kettle")
    mesh = on_ground(mesh)
    return paint(mesh, labels, {0: (ENAMEL, TextureStyle()), 1: (BRASS, TextureStyle(cell=1 / 10))}, seed)


OBJECTS: dict[str, Callable[..., trimesh.Trimesh]] = {
    "bottle": bottle,
    "relief_disc": relief_disc,
    "armchair": armchair,
    "cup": cup,
    "plain_vase": plain_vase,
    "stool": stool,
    "lamp": lamp,
    "bench": bench,
    "bowl": bowl,
    "picture_frame": picture_frame,
    "kettle": kettle,
}
PLAIN = frozenset({"plain_vase"})  # deliberately near-uniform colour


def make(name: str, seed: int = 0, edge_scale: float = 1.0) -> trimesh.Trimesh:
    """The object ``name`` of ``OBJECTS``; KeyError names the known objects."""
    if name not in OBJECTS:
        raise KeyError(f"unknown object {name!r}; known: {', '.join(OBJECTS)}")
    return OBJECTS[name](seed=seed, edge_scale=edge_scale)


if __name__ == "__main__":
    import sys
    import time

    for nm in sys.argv[1:] or list(OBJECTS):
        t0 = time.perf_counter()
        m = make(nm)
        print(f"{describe(m, nm)}  {time.perf_counter() - t0:.1f}s", flush=True)
