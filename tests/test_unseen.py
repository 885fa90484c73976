"""Surfaces that no photo sees (pipeline.geometry.unseen): the visibility test and the harmonic fill."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from pipeline.geometry.unseen import harmonic_fill, settle_unseen, view_evidence
from pipeline.imaging.render import look_at


def _plane(n: int = 21) -> trimesh.Trimesh:
    """A flat (n x n)-vertex grid on z = 0, 1 m square, triangulated."""
    xs = np.linspace(-0.5, 0.5, n)
    gx, gy = np.meshgrid(xs, xs, indexing="ij")
    verts = np.stack([gx.ravel(), gy.ravel(), np.zeros(n * n)], 1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return trimesh.Trimesh(verts, faces, process=False)


def test_a_free_bump_is_filled_flat_from_its_fixed_rim_and_nothing_else_moves() -> None:
    plane = _plane()
    v = np.asarray(plane.vertices).copy()
    r = np.hypot(v[:, 0], v[:, 1])
    free = r < 0.2
    v[free, 2] = -0.3 * (1 - r[free] / 0.2)  # a membrane hanging from the rim
    out, moved = harmonic_fill(v, plane.edges_unique, free)
    assert np.array_equal(moved, free)
    # a constant is harmonic: the fixed rim lies at z = 0, so does the fill, whatever the hanging shape was
    assert np.abs(out[free, 2]).max() < 1e-9
    assert np.array_equal(out[~free], v[~free])
    # each free vertex is the mean of its neighbours (the uniform Laplacian's harmonic condition)
    nbrs = [[] for _ in range(len(v))]
    for a, b in plane.edges_unique:
        nbrs[a].append(b)
        nbrs[b].append(a)
    for i in np.flatnonzero(free):
        assert np.allclose(out[i], out[nbrs[i]].mean(0), atol=1e-9)


def test_a_free_group_with_no_fixed_neighbour_stays_where_it_is() -> None:
    a = trimesh.creation.icosphere(subdivisions=1)
    b = trimesh.creation.icosphere(subdivisions=1)
    b.apply_translation([3.0, 0, 0])
    both = trimesh.util.concatenate([a, b])
    free = np.zeros(len(both.vertices), dtype=bool)
    free[len(a.vertices):] = True  # the whole second sphere: nothing fixed borders it
    free[0] = True  # one vertex of the first, bordered by fixed ones
    out, moved = harmonic_fill(both.vertices, both.edges_unique, free)
    assert moved[0] and not moved[len(a.vertices):].any()
    assert np.array_equal(out[len(a.vertices):], np.asarray(both.vertices)[len(a.vertices):])
    with pytest.raises(ValueError, match="free must be"):
        harmonic_fill(both.vertices, both.edges_unique, free[:-1])


def _ring(n: int, height: float, dist: float = 2.0) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    K = np.array([[200.0, 0, 100], [0, 200.0, 100], [0, 0, 1]])
    w2cs = [look_at(np.array([dist * np.cos(a), dist * np.sin(a), height]), np.zeros(3), np.array([0.0, 0, 1]))
            for a in np.linspace(0, 2 * np.pi, n, endpoint=False)]
    return np.array([K] * n), np.array(w2cs), [(200, 200)] * n


def test_view_evidence_sees_the_top_from_above_and_never_the_bottom() -> None:
    box = trimesh.creation.box(extents=[0.6, 0.6, 0.3]).subdivide().subdivide().subdivide()
    Ks, w2cs, sizes = _ring(8, 1.5)
    best, rim = view_evidence(box, Ks, w2cs, sizes)
    assert not rim.any()  # no silhouettes: nothing placed by one
    n = np.asarray(box.vertex_normals)
    top = n[:, 2] > 0.99
    bottom = n[:, 2] < -0.99
    assert top.sum() > 10 and bottom.sum() > 10
    assert best[top].min() > 0.5  # the cameras stand 37 degrees above the horizon
    assert best[bottom].max() == 0.0  # below every camera's view of it: never facing one
    with pytest.raises(ValueError, match="one K, pose, size"):
        view_evidence(box, Ks[:-1], w2cs, sizes)


def test_a_membrane_under_a_slab_that_no_camera_sees_spans_its_rim() -> None:
    """A slab 0.3-0.45 m up whose bottom hangs down to 0.15 m in the middle, seen only from above (the cameras of a
    walk around a table): after the fill the bottom spans the slab's lower rim, and the top, which every camera
    sees, does not move."""
    slab = trimesh.creation.box(extents=[0.6, 0.6, 0.15])
    slab = slab.subdivide().subdivide().subdivide()
    slab.apply_translation([0, 0, 0.375])
    v = np.asarray(slab.vertices).copy()
    bottom = v[:, 2] < 0.301
    inner = bottom & (np.abs(v[:, 0]) < 0.29) & (np.abs(v[:, 1]) < 0.29)
    v[inner, 2] -= 0.15 * (1 - np.maximum(np.abs(v[inner, 0]), np.abs(v[inner, 1])) / 0.3)
    hanging = trimesh.Trimesh(v, slab.faces, process=False)
    Ks, w2cs, sizes = _ring(12, 1.8)  # 40 degrees above the horizon
    out = settle_unseen(hanging, Ks, w2cs, sizes, facing=0.45)
    assert out.free[inner].all()
    assert out.vertices[inner, 2].min() > 0.29  # was down to 0.15
    top = v[:, 2] > 0.449
    assert np.array_equal(out.vertices[top], v[top])
    with pytest.raises(ValueError, match="facing"):
        settle_unseen(hanging, Ks, w2cs, sizes, facing=1.0)


def test_a_dome_seen_only_from_the_side_keeps_the_top_its_silhouettes_hold() -> None:
    """Cameras 10 degrees above the horizon see a dome's top only at grazing angles, but its outline in their
    silhouettes is the dome's profile: with the silhouettes, the top stays; without them it would be filled flat
    from where the views see the dome facing them."""
    from pipeline.imaging.render import render

    dome = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    dome.apply_translation([0, 0, 0.1])
    Ks, w2cs, sizes = _ring(16, 0.1 + 2.0 * np.tan(np.radians(10)))
    masks = [render(dome, K, w2c, w, h).mask for K, w2c, (w, h) in zip(Ks, w2cs, sizes)]
    top = np.asarray(dome.vertices)[:, 2] > 0.38
    blind = settle_unseen(dome, Ks, w2cs, sizes, facing=0.45)
    assert blind.free[top].all() and blind.vertices[top, 2].max() < 0.38  # no silhouettes: the top is cut
    held = settle_unseen(dome, Ks, w2cs, sizes, facing=0.45, masks=masks)
    assert not held.free[np.argmax(np.asarray(dome.vertices)[:, 2])]
    assert held.vertices[:, 2].max() > 0.395


def test_rims_count_the_views_whose_silhouettes_hold_them() -> None:
    """Each view's outline of a sphere is a circle of rim vertices; a view and its opposite share it (the cameras
    are far), so asking for two views holds fewer vertices than asking for one, and asking for more than the views
    there are holds none."""
    from pipeline.imaging.render import render

    ball = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    Ks, w2cs, sizes = _ring(8, 0.0, dist=3.0)
    masks = [render(ball, K, w2c, w, h).mask for K, w2c, (w, h) in zip(Ks, w2cs, sizes)]
    best, rim = view_evidence(ball, Ks, w2cs, sizes, masks)
    assert rim.dtype.kind == "i" and rim.max() <= len(Ks)
    assert (rim >= 1).sum() > (rim >= 2).sum() > 0
    for need in (1, 2, len(Ks) + 1):
        out = settle_unseen(ball, Ks, w2cs, sizes, facing=0.9, masks=masks, rim_views=need)
        assert out.unseen_share == pytest.approx(((best < 0.9) & (rim < need)).mean())
    with pytest.raises(ValueError, match="rim_views"):
        settle_unseen(ball, Ks, w2cs, sizes, facing=0.45, masks=masks, rim_views=0)


def test_a_membrane_that_the_silhouettes_outline_is_filled_where_it_faces_the_table() -> None:
    """The hull's membrane under a slab is made of the photos' lower outlines: with the silhouettes of the hanging
    shape itself (what a hull gives), its grazed rim holds it down unless a rim holds only what faces up or sideways.
    A dome's top, which its silhouettes also hold, faces up and stays (the test above, and here with the rule)."""
    from pipeline.geometry.unseen import freed_islands
    from pipeline.imaging.render import render

    slab = trimesh.creation.box(extents=[0.6, 0.6, 0.15]).subdivide().subdivide().subdivide()
    slab.apply_translation([0, 0, 0.375])
    v = np.asarray(slab.vertices).copy()
    inner = (v[:, 2] < 0.301) & (np.abs(v[:, 0]) < 0.29) & (np.abs(v[:, 1]) < 0.29)
    v[inner, 2] -= 0.15 * (1 - np.maximum(np.abs(v[inner, 0]), np.abs(v[inner, 1])) / 0.3)
    hanging = trimesh.Trimesh(v, slab.faces, process=False)
    Ks, w2cs, sizes = _ring(16, 0.375 + 2.0 * np.tan(np.radians(12)))  # 12 degrees above the slab's middle
    masks = [render(hanging, K, w2c, w, h).mask for K, w2c, (w, h) in zip(Ks, w2cs, sizes)]
    up = np.array([0.0, 0.0, 1.0])
    held = settle_unseen(hanging, Ks, w2cs, sizes, facing=0.45, masks=masks)
    assert held.vertices[inner, 2].min() < 0.2  # the rims keep most of the membrane hanging
    filled = settle_unseen(hanging, Ks, w2cs, sizes, facing=0.45, masks=masks, up=up, rim_max_down=0.5,
                           island_vertices=50)
    assert filled.vertices[inner, 2].min() > 0.28
    top = v[:, 2] > 0.449  # seen at 10 degrees, so free too where no rim holds it: filled flat from its rim
    assert np.abs(filled.vertices[top, 2] - 0.45).max() < 1e-6
    dome = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    dome.apply_translation([0, 0, 0.1])
    Ks, w2cs, sizes = _ring(16, 0.1 + 2.0 * np.tan(np.radians(10)))
    masks = [render(dome, K, w2c, w, h).mask for K, w2c, (w, h) in zip(Ks, w2cs, sizes)]
    kept = settle_unseen(dome, Ks, w2cs, sizes, facing=0.45, masks=masks, up=up, rim_max_down=0.5,
                         island_vertices=50)
    assert kept.vertices[:, 2].max() > 0.395
    # islands: a fixed pair among free vertices goes free; a fixed group at least the size asked for stays
    plane = _plane(11)
    free = np.ones(len(plane.vertices), dtype=bool)
    free[[60, 61]] = False
    assert freed_islands(plane.edges_unique, free, 3).all()
    assert not freed_islands(plane.edges_unique, free, 2)[[60, 61]].any()
    with pytest.raises(ValueError, match="rim_max_down"):
        settle_unseen(dome, Ks, w2cs, sizes, facing=0.45, rim_max_down=1.5)
