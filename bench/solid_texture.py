"""The benchmark objects' colours: a seeded 3-D solid texture (multi-octave value noise through a palette, plus warped
stripes, dots, patches and a fine grain), evaluated at face centres so that multi-view stereo has something to match."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RGB = tuple[float, float, float]


# ----------------------------------------------------------------------------------------------- solid texture
@dataclass(frozen=True)
class Palette:
    """Colours of one surface: ``stops`` is the gradient the noise runs through, ``accents`` paint stripes, dots
    and patches. Components are floats in 0..1."""

    stops: tuple[RGB, ...]
    accents: tuple[RGB, ...]


@dataclass(frozen=True)
class TextureStyle:
    """How much of each pattern a textured surface gets; lengths are fractions of the object size."""

    cell: float = 1 / 5          # largest noise cell
    octaves: int = 6             # finest cell = cell / 2**(octaves-1)
    speckle: float = 0.3         # fine luminance grain (object size / 200) for stereo matching in close-ups
    contrast: float = 2.6        # noise is stretched around 0.5 by this factor before the palette lookup
    stripe_period: float = 1 / 9
    stripe_width: float = 0.22   # fraction of a period
    stripe_amount: float = 0.75  # fraction of the surface (by a low-frequency mask) that carries stripes
    dots: int = 260              # dot centres scattered in the bounding box
    dot_radius: tuple[float, float] = (1 / 90, 1 / 35)
    patch_threshold: float = 0.6  # low-frequency noise above this is painted with an accent patch
    plain: bool = False          # near-uniform: first stop only, faint noise, no stripes/dots/patches
    plain_amplitude: float = 0.025


def value_noise(points: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 3-D value noise in 0..1 at ``points`` (n, 3), lattice spacing 1 (quintic-faded trilinear).

    Lattice values come from a seeded table of 4096 values indexed by a spatial hash of the cell corner (one
    gather per corner, which is what keeps this fast on a million face centres)."""
    vals = np.random.default_rng(seed).random(4096)
    cell = np.floor(points)
    f = points - cell
    u = f * f * f * (f * (f * 6 - 15) + 10)
    i = cell.astype(np.int64)
    hx = (i[:, 0] * 73856093, (i[:, 0] + 1) * 73856093)
    hy = (i[:, 1] * 19349663, (i[:, 1] + 1) * 19349663)
    hz = (i[:, 2] * 83492791, (i[:, 2] + 1) * 83492791)

    def v(dx: int, dy: int, dz: int) -> np.ndarray:
        return vals[(hx[dx] ^ hy[dy] ^ hz[dz]) & 4095]

    ux, uy, uz = u[:, 0], u[:, 1], u[:, 2]
    x00 = v(0, 0, 0) + ux * (v(1, 0, 0) - v(0, 0, 0))
    x10 = v(0, 1, 0) + ux * (v(1, 1, 0) - v(0, 1, 0))
    x01 = v(0, 0, 1) + ux * (v(1, 0, 1) - v(0, 0, 1))
    x11 = v(0, 1, 1) + ux * (v(1, 1, 1) - v(0, 1, 1))
    y0 = x00 + uy * (x10 - x00)
    y1 = x01 + uy * (x11 - x01)
    return y0 + uz * (y1 - y0)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (so octaves and stripes are not aligned with the axes)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def fbm(points: np.ndarray, cell: float, octaves: int, seed: int) -> np.ndarray:
    """Fractal sum of ``octaves`` value-noise octaves (n,) in 0..1; the first has lattice spacing ``cell``.

    Each octave is rotated and shifted at random, which hides the lattice; amplitudes halve per octave."""
    rng = np.random.default_rng(seed)
    total = np.zeros(len(points))
    norm = 0.0
    for k in range(octaves):
        rot = _random_rotation(rng)
        shift = rng.uniform(0, 256, 3)
        amp = 0.5 ** k
        q = np.einsum("ij,kj->ik", points, rot * (2.0 ** k / cell)) + shift   # einsum: faster than @ for (n,3)x(3,3)
        total += amp * value_noise(q, int(rng.integers(1 << 31)))
        norm += amp
    return total / norm


def _gradient(t: np.ndarray, stops: tuple[RGB, ...]) -> np.ndarray:
    """Piecewise-linear colour ramp: t (n,) in 0..1 -> (n, 3)."""
    cols = np.asarray(stops, float)
    if len(cols) == 1:
        return np.repeat(cols, len(t), 0)
    x = np.clip(t, 0, 1) * (len(cols) - 1)
    k = np.minimum(x.astype(np.int64), len(cols) - 2)
    w = (x - k)[:, None]
    return cols[k] * (1 - w) + cols[k + 1] * w


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0, 1)
    return t * t * (3 - 2 * t)


def solid_texture(points: np.ndarray, size: float, palette: Palette, seed: int,
                  style: TextureStyle = TextureStyle()) -> np.ndarray:
    """Colours (n, 3) float in 0..1 of a seeded solid texture at ``points`` (n, 3) of an object of ``size`` m."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(1 << 31, size=8)  # fixed count: adding a pattern must not reseed the others
    if style.plain:
        # faint, low-frequency variation only: a nearly uniform glaze
        n = fbm(points, style.cell * size, 3, int(seeds[0])) - 0.5
        return np.clip(np.asarray(palette.stops[0])[None] * (1 + 2 * style.plain_amplitude * n[:, None]), 0, 1)
    base = fbm(points, style.cell * size, style.octaves, int(seeds[0]))
    col = _gradient((base - 0.5) * style.contrast + 0.5, palette.stops)
    accents = np.asarray(palette.accents, float)
    # patches: blobs where a low-frequency noise is high, each blob one accent colour
    low = fbm(points, 1.6 * style.cell * size, 3, int(seeds[1]))
    pick = (fbm(points, 2.5 * style.cell * size, 2, int(seeds[2])) * 7).astype(np.int64) % len(accents)
    w = smoothstep(style.patch_threshold, style.patch_threshold + 0.03, low)[:, None]
    col = col * (1 - 0.85 * w) + 0.85 * w * accents[pick]
    # stripes: two families along random directions, warped by noise (no exact repetition for stereo to confuse)
    mask = fbm(points, 2 * style.cell * size, 2, int(seeds[3]))
    for fam in range(2):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        period = style.stripe_period * size * (1.0 + 0.6 * fam)
        warp = (fbm(points, style.cell * size, 3, int(seeds[4 + fam])) - 0.5) * 1.5 * period
        phase = np.mod((points @ d + warp) / period, 1.0)
        on = (phase < style.stripe_width) & (mask < style.stripe_amount - 0.25 * fam + 0.15)
        col[on] = 0.25 * col[on] + 0.75 * accents[(fam + 1) % len(accents)]
    # dots of several sizes, each its own accent colour
    lo, hi = points.min(0), points.max(0)
    centres = rng.uniform(lo, hi, (style.dots, 3))
    radii = size * rng.uniform(*style.dot_radius, style.dots)
    colours = accents[rng.integers(len(accents), size=style.dots)]
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(centres).query(points, k=3, distance_upper_bound=float(radii.max()))
    for j in range(3):  # the three nearest centres, so overlapping dots of different sizes all show
        ok = np.isfinite(dist[:, j])
        hit = np.zeros(len(points), bool)
        hit[ok] = dist[ok, j] < radii[idx[ok, j]]
        col[hit] = colours[idx[hit, j]] * 0.9 + 0.1 * col[hit]
    grain = value_noise(points * (200.0 / size) + rng.uniform(0, 256, 3), int(seeds[6])) - 0.5
    return np.clip(col * (1 + style.speckle * grain[:, None]), 0, 1)


def to_u8(rgb: np.ndarray) -> np.ndarray:
    """(n, 3) float 0..1 -> (n, 4) uint8 RGBA, opaque."""
    out = np.full((len(rgb), 4), 255, np.uint8)
    out[:, :3] = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
    return out
