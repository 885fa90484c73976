"""Estimated silhouettes keep what the depth maps measured: gaps between legs stay open."""
from __future__ import annotations

import dataclasses

import cv2
import pytest
import numpy as np
import trimesh
from scipy import ndimage

from pipeline.geometry.automask import AutoMaskSettings, consistent_masks, hull_silhouettes, keep_seeded
from pipeline.imaging.render import look_at, render
from pipeline.geometry.mvs import DepthMap, backproject
from pipeline.geometry.silhouettes import SilhouetteSettings, plane_margin, seed_labels


W, H = 320, 240  # the synthetic views' size


def ring_views(mesh: trimesh.Trimesh, target: np.ndarray, radius: float, height: float, n: int, phase: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """n cameras on a circle of ``radius`` at ``height`` above ``target`` (3,), looking at it: Ks (n, 3, 3), w2cs
    (n, 4, 4) and the mesh's true silhouettes, n (H, W) bool."""
    K = np.array([[300.0, 0, W / 2], [0, 300.0, H / 2], [0, 0, 1.0]])
    w2cs = np.array([look_at(target + np.array([radius * np.cos(t), radius * np.sin(t), height]), target,
                             np.array([0, 0, 1.0]))
                     for t in np.linspace(0, 2 * np.pi, n, endpoint=False) + phase])
    truth = [render(mesh, K, w2c, W, H).mask.reshape(H, W) for w2c in w2cs]
    return np.repeat(K[None], n, axis=0), w2cs, truth


def test_keep_seeded_fills_holes_except_those_holding_measured_background() -> None:
    mask = np.zeros((60, 90), bool)
    mask[5:55, 5:85] = True
    mask[20:30, 15:30] = False  # a hole with no evidence: a plain patch GrabCut left out
    mask[20:40, 60:75] = False  # a hole the depth maps saw through
    mask[50:58, 40:50] = True
    stray = np.zeros_like(mask)
    stray[2:4, 2:4] = True  # a separate speck without a seed
    seeds = np.zeros_like(mask)
    seeds[10, 10] = True
    background = np.zeros_like(mask)
    background[30, 66] = True

    plain = keep_seeded(mask | stray, seeds)
    assert plain[20:30, 15:30].all() and plain[20:40, 60:75].all()
    assert not plain[2:4, 2:4].any()
    kept = keep_seeded(mask | stray, seeds, background)
    assert kept[20:30, 15:30].all(), "a hole without measured background is filled"
    assert not kept[20:40, 60:75].any(), "a hole holding measured background stays open"
    assert (kept == (plain & ~(np.pad(np.ones((20, 15), bool), ((20, 20), (60, 15)))))).all()


def stool() -> trimesh.Trimesh:
    """A seat on four legs joined low down by bars: from the side, windows framed on every side."""
    parts = [trimesh.creation.box(extents=(1.0, 1.0, 0.2), transform=trimesh.transformations.translation_matrix(
        (0, 0, 0.9)))]
    for x in (-0.42, 0.42):
        for y in (-0.42, 0.42):
            parts.append(trimesh.creation.box(extents=(0.14, 0.14, 0.8),
                                              transform=trimesh.transformations.translation_matrix((x, y, 0.4))))
    for x in (-0.42, 0.42):
        parts.append(trimesh.creation.box(extents=(0.1, 0.98, 0.1),
                                          transform=trimesh.transformations.translation_matrix((x, 0, 0.2))))
    for y in (-0.42, 0.42):
        parts.append(trimesh.creation.box(extents=(0.98, 0.1, 0.1),
                                          transform=trimesh.transformations.translation_matrix((0, y, 0.2))))
    return trimesh.util.concatenate(parts)


def test_the_second_round_keeps_a_gap_between_legs_open_where_stereo_saw_the_background() -> None:
    """Two of sixteen first-round masks have the windows between the stool's legs filled (the table seen there
    taken for the object). The hull round removes the membrane from the hull, but in those views the hole filling
    closes it again, though GrabCut leaves the table out; with the depth maps' background seeds in the windows it
    stays open wherever the hull is open, and the object stays whole."""
    mesh = stool()
    Ks, w2cs, truth = ring_views(mesh, np.array([0, 0, 0.5]), 4.0, 0.9, 16, phase=0.3)
    h, w = H, W
    filled = [cv2.morphologyEx(t.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)) > 0 for t in truth]
    filled = [ndimage.binary_fill_holes(t) for t in filled]
    windows = [f_ & ~t for f_, t in zip(filled, truth)]
    assert all(wi.sum() > 200 for wi in windows), "every view sees windows between the legs"
    bad = (3, 11)
    first = [filled[i] if i in bad else truth[i] for i in range(16)]
    # the object grey, the table seen through the windows brown, the room around green
    rgbs = []
    for t, win in zip(truth, windows):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = (60, 160, 60)
        img[t] = (128, 128, 128)
        img[win] = (110, 80, 50)
        rgbs.append(img)
    seeds = []
    for t, win in zip(truth, windows):
        lab = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
        lab[cv2.erode(win.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0] = cv2.GC_BGD
        seeds.append(lab)
    s = AutoMaskSettings(hull_resolution=128)
    bounds = (np.array([-0.7, -0.7, -0.05]), np.array([0.7, 0.7, 1.1]))

    # the windows as the hull round sees them: where its hull is open (a coarse hull keeps some volume under the
    # seat, which no seed can reopen; the depth maps' own pass, test_dense, carves that)
    hulls = hull_silhouettes(first, Ks, w2cs, s, "cpu", bounds, None)
    open_ = [windows[i] & ~hulls[i] for i in range(16)]
    assert all(open_[i].sum() > 100 for i in bad)

    def window_share(masks: list[np.ndarray]) -> float:
        return float(np.mean([(masks[i] & open_[i]).sum() / open_[i].sum() for i in bad]))

    without = consistent_masks(rgbs, rgbs, Ks, w2cs, first, s, "cpu", bounds=bounds)
    with_seeds = consistent_masks(rgbs, rgbs, Ks, w2cs, first, s, "cpu", bounds=bounds, seeds=seeds)
    assert window_share(without) > 0.8, "without the seeds the membrane comes back in the views that had it"
    assert window_share(with_seeds) < 0.05
    # and the object itself is kept in every view
    recall = [(m & t).sum() / t.sum() for m, t in zip(with_seeds, truth)]
    assert min(recall) > 0.9, recall


def test_open_core_reopens_a_rings_hole_that_every_first_mask_filled() -> None:
    """A ring lying on the table, seen from 45° above: the table shows through its hole, but every first-round mask
    filled it, so the hull holds it and the second round made it sure foreground. With ``open_core`` the measured
    table pixels inside the hull's core stay background and GrabCut's colours decide around them: the hole opens,
    the ring stays whole; without it the hole stays filled."""
    ring = trimesh.creation.torus(major_radius=0.5, minor_radius=0.22)
    ring.apply_translation((0, 0, 0.22))
    Ks, w2cs, truth = ring_views(ring, np.array([0, 0, 0.2]), 3.0, 3.0, 12)
    h, w = H, W
    holes = [ndimage.binary_fill_holes(t) & ~t for t in truth]
    assert all(hole.sum() > 300 for hole in holes), "every view sees the table through the hole"
    first = [ndimage.binary_fill_holes(t) for t in truth]  # every first-round mask filled the hole
    rgbs, seeds = [], []
    for t, hole in zip(truth, holes):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = (110, 80, 50)  # the table, brown, around the ring and through its hole
        img[t] = (230, 200, 40)  # the ring, yellow
        rgbs.append(img)
        lab = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
        # stereo measured a scatter of the table's pixels through the hole (every fifth row and column)
        sparse = np.zeros_like(hole)
        sparse[::5, ::5] = True
        lab[(cv2.erode(hole.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0) & sparse] = cv2.GC_BGD
        lab[(cv2.erode(t.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0) & sparse] = cv2.GC_FGD
        seeds.append(lab)
    s = AutoMaskSettings(hull_resolution=128)
    bounds = (np.array([-0.8, -0.8, -0.05]), np.array([0.8, 0.8, 0.5]))
    got = {flag: consistent_masks(rgbs, rgbs, Ks, w2cs, first, s, "cpu", bounds=bounds, seeds=seeds,
                                  open_core=flag) for flag in (False, True)}
    open_share = {flag: float(np.mean([(~m & hole).sum() / hole.sum() for m, hole in zip(masks, holes)]))
                  for flag, masks in got.items()}
    assert open_share[False] < 0.2 and open_share[True] > 0.8, open_share
    recall = [(m & t).sum() / t.sum() for m, t in zip(got[True], truth)]
    assert min(recall) > 0.95, recall


def test_the_table_margin_is_a_small_part_of_a_flat_objects_height() -> None:
    from pipeline.geometry.silhouettes import SilhouetteSettings, plane_margin

    s = SilhouetteSettings()
    up, table = np.array([0.0, 0.0, 1.0]), 0.0
    tall = (np.array([-0.3, -0.3, 0.0]), np.array([0.3, 0.3, 0.9]))
    flat = (np.array([-0.15, -0.15, 0.0]), np.array([0.15, 0.15, 0.035]))
    # plain reference: the box's share, unless the box's height above the plane makes that a large part of it
    assert plane_margin(up, table, *tall, s) == pytest.approx(s.base_margin * 0.9)
    assert plane_margin(up, table, *flat, s) == pytest.approx(s.base_margin_height * 0.035)
    assert plane_margin(up, table, *flat, s) < 0.1 * 0.035 < s.base_margin * 0.3
    # a wall behind the box: the height is measured along the wall's own normal
    assert plane_margin(np.array([0.0, 1.0, 0.0]), -0.3, *flat, s) == pytest.approx(min(s.base_margin * 0.3,
                                                                                       s.base_margin_height * 0.3))


def test_a_flat_objects_side_seeds_the_object_down_to_the_table() -> None:
    """A disc 3.5 cm high and 30 cm wide on a table, seen from a low camera: the depth pixels of its side below
    2 % of the box (6.4 mm, the lowest 18 % of the side) seeded the table; now only those below 5 % of the box's
    height (2 mm) do."""
    import cv2

    from pipeline.geometry.mvs import DepthMap
    from pipeline.geometry.silhouettes import SilhouetteSettings, seed_labels

    disc = trimesh.creation.cylinder(radius=0.15, height=0.035, sections=64)
    disc.apply_translation([0, 0, 0.0175])
    size = 160
    K = np.array([[size * 1.2, 0, size / 2], [0, size * 1.2, size / 2], [0, 0, 1.0]])
    w2c = look_at(np.array([0.0, -0.9, 0.12]), np.array([0.0, 0.0, 0.0175]), np.array([0.0, 0.0, 1.0]))
    r = render(disc, K, w2c, size, size)
    dm = DepthMap(depth=np.where(r.mask, r.depth, 0).astype(np.float32), score=r.mask.astype(np.float32), K=K,
                  w2c=w2c)
    lo, hi = np.array([-0.16, -0.16, 0.0]), np.array([0.16, 0.16, 0.04])
    plane = [(np.array([0.0, 0.0, 1.0]), 0.0)]
    side = r.mask & (np.abs(r.normal[..., 2]) < 0.5)
    table_seeds = {}
    for name, s in (("box", SilhouetteSettings(base_margin_height=1e9)), ("height", SilhouetteSettings())):
        labels = seed_labels(dm, (size, size), lo, hi, plane, s)
        table_seeds[name] = int(((labels == cv2.GC_BGD) & side).sum())
    # the box's margin (6.4 mm) gives the table about 18 % of the side; the height's (2 mm) about 6 %
    assert table_seeds["box"] > 0.12 * side.sum(), (table_seeds, side.sum())
    assert table_seeds["height"] < 0.4 * table_seeds["box"], table_seeds


def test_a_legs_foot_on_the_table_is_left_to_grabcut_and_the_table_beside_it_is_not() -> None:
    """A leg 2 cm thick standing on a table, seen from above at 40 degrees: the foot's own depth points lie within
    the plane margin (9 mm) and seeded sure background, so GrabCut cut the foot off. With ``base_open`` the band's
    points under the object's footprint (object points just above the margin) are left to GrabCut; the table
    beside the leg, more than a margin from its footprint (as between a body's legs), stays sure background."""
    leg = trimesh.creation.cylinder(radius=0.01, height=0.4, sections=32)
    leg.apply_translation([0, 0, 0.2])
    table = trimesh.creation.box((1.0, 1.0, 0.01), trimesh.transformations.translation_matrix((0, 0, -0.005)))
    size = 240
    K = np.array([[size * 1.5, 0, size / 2], [0, size * 1.5, size / 2], [0, 0, 1.0]])
    w2c = look_at(np.array([0.0, -0.6, 0.5]), np.array([0.0, 0.0, 0.1]), np.array([0.0, 0.0, 1.0]))

    def depth_map(mesh: trimesh.Trimesh) -> DepthMap:
        r = render(mesh, K, w2c, size, size)
        return DepthMap(depth=np.where(r.mask, r.depth, 0).astype(np.float32), score=r.mask.astype(np.float32),
                        K=K, w2c=w2c)

    dm = depth_map(trimesh.util.concatenate([leg, table]))
    lo, hi = np.array([-0.2, -0.2, -0.01]), np.array([0.2, 0.2, 0.45])
    plane = [(np.array([0.0, 0.0, 1.0]), 0.0)]
    s = SilhouetteSettings()
    margin = plane_margin(*plane[0], lo, hi, s)
    pts, idx = backproject(dm)
    grid = np.zeros(size * size, dtype=int)  # 1: the foot in the band, 2: the table beyond a margin from it
    grid[idx[(pts[:, 2] < margin) & (np.hypot(pts[:, 0], pts[:, 1]) < 0.0105)]] = 1
    grid[idx[(pts[:, 2] < 1e-4) & (np.hypot(pts[:, 0], pts[:, 1]) > 0.01 + 2 * margin)]] = 2
    foot, table_px = (grid == 1).reshape(size, size), (grid == 2).reshape(size, size)
    assert foot.sum() > 20 and table_px.sum() > 1000
    shut = seed_labels(dm, (size, size), lo, hi, plane, s)
    opened = seed_labels(dm, (size, size), lo, hi, plane, dataclasses.replace(s, base_open=True))
    assert (shut[foot] == cv2.GC_BGD).mean() > 0.9
    assert (opened[foot] == cv2.GC_BGD).mean() < 0.05
    assert (opened[table_px] == cv2.GC_BGD).all() and (shut[table_px] == cv2.GC_BGD).all()
    # the object's seeds are the same, and without a leg there is no footprint: the table stays background
    assert ((opened == cv2.GC_FGD) == (shut == cv2.GC_FGD)).all()
    bare = depth_map(table)
    assert (seed_labels(bare, (size, size), lo, hi, plane, dataclasses.replace(s, base_open=True))
            == seed_labels(bare, (size, size), lo, hi, plane, s)).all()


def test_a_view_that_saw_a_gap_open_keeps_it_open_where_the_other_views_filled_it() -> None:
    """A slab on four legs: twelve of sixteen first-round masks filled the gaps between its legs under the slab (the
    table in shadow taken for the object), so the hull holds a membrane there and the second round makes it sure
    foreground in every view. With ``core_in_first`` a view's sure foreground is only what its own first round
    held: the four views that saw the gaps open keep them open, and the slab and legs stay whole."""
    parts = [trimesh.creation.box((1.2, 0.8, 0.15), trimesh.transformations.translation_matrix((0, 0, 0.6)))]
    parts += [trimesh.creation.box((0.12, 0.12, 0.55), trimesh.transformations.translation_matrix((x, y, 0.275)))
              for x in (-0.5, 0.5) for y in (-0.3, 0.3)]
    mesh = trimesh.util.concatenate(parts)
    Ks, w2cs, truth = ring_views(mesh, np.array([0, 0, 0.35]), 3.0, 0.8, 16, phase=0.2)
    h, w = H, W
    # the gaps: the silhouette's bounding box outside the object (between the legs under the slab, and its corners)
    gaps = []
    for t in truth:
        ys, xs = np.nonzero(t)
        box = np.zeros_like(t)
        box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        gaps.append(box & ~t)
    good = (1, 5, 9, 13)
    first = [truth[i] if i in good else truth[i] | gaps[i] for i in range(16)]
    rgbs = []
    for t, gap in zip(truth, gaps):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = (60, 160, 60)  # the room
        img[int(0.6 * h):] = (110, 80, 50)  # the table
        img[t] = (128, 128, 128)
        img[gap & (np.arange(h)[:, None] >= int(0.6 * h))] = (55, 40, 25)  # the table in the slab's shadow
        rgbs.append(img)
    s = AutoMaskSettings(hull_resolution=128)
    bounds = (np.array([-0.8, -0.6, -0.05]), np.array([0.8, 0.6, 0.8]))
    got = {flag: consistent_masks(rgbs, rgbs, Ks, w2cs, first, s, "cpu", bounds=bounds, core_in_first=flag)
           for flag in (False, True)}
    share = {flag: float(np.mean([(m[i] & gaps[i]).sum() / gaps[i].sum() for i in good]))
             for flag, m in got.items()}
    assert share[False] > 0.3, "without it the hull's membrane is sure foreground in the views that saw it open"
    assert share[True] < 0.1, share
    recall = [(m & t).sum() / t.sum() for m, t in zip(got[True], truth)]
    assert min(recall) > 0.9, recall


def test_grabcut_gives_the_same_mask_on_any_thread() -> None:
    """GrabCut's colour models start from k-means on OpenCV's per-thread random generator: unseeded, the same photo
    and labels gave masks differing by up to 187 pixels on the threads of a pool (and replays of one job's
    silhouettes by 22k pixels). Seeded, every thread gives the same mask."""
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from pipeline.geometry.automask import grabcut

    rgba = cv2.imread(str(Path(__file__).parent.parent / "samples" / "spot" / "images" / "r_003.png"),
                      cv2.IMREAD_UNCHANGED)
    rng = np.random.default_rng(0)
    bg = cv2.GaussianBlur(rng.integers(0, 256, rgba.shape[:2] + (3,)).astype(np.uint8), (9, 9), 3)
    a = rgba[..., 3:] / 255.0
    img = np.ascontiguousarray((rgba[..., 2::-1] * a + bg * (1 - a)).astype(np.uint8))
    h, w = img.shape[:2]
    labels = np.full((h, w), cv2.GC_BGD, np.uint8)
    labels[h // 6:5 * h // 6, w // 5:4 * w // 5] = cv2.GC_PR_BGD
    labels[h // 4:3 * h // 4, w // 3:2 * w // 3] = cv2.GC_PR_FGD
    labels[2 * h // 5:3 * h // 5, 2 * w // 5:3 * w // 5] = cv2.GC_FGD

    def run(k: int) -> np.ndarray:
        for _ in range(k):  # leave this thread's generator somewhere else
            cv2.randu(np.zeros((10, 10)), 0, 1)
        return grabcut(img, labels, 3)

    with ThreadPoolExecutor(4) as pool:
        masks = list(pool.map(run, range(8)))
    assert masks[0].any() and (~masks[0]).any()
    assert all((m == masks[0]).all() for m in masks)


def test_the_edge_is_cut_again_at_the_photos_size() -> None:
    """GrabCut runs at the working size (half a 960-px photo's side); brought up to the photo, its edge is a
    staircase two pixels high. Cut again in a band at the photo's size, the edge follows the photo: against the true
    silhouette of a ring on a stick, the best working-size mask (the truth itself, reduced) errs in at least twice
    as many pixels, and nothing of the stick, 5 px wide in the photo, is lost."""
    from pipeline.geometry.automask import edge_at_size

    ring = trimesh.creation.torus(major_radius=0.3, minor_radius=0.08)
    stick = trimesh.creation.cylinder(radius=0.004, height=0.9)
    stick.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    stick.apply_translation([0.0, -0.55, 0.0])
    mesh = trimesh.util.concatenate([ring, stick])
    w, h = 960, 720
    K = np.array([[900.0, 0, w / 2], [0, 900.0, h / 2], [0, 0, 1.0]])
    w2c = look_at(np.array([0.3, -0.4, 2.6]), np.array([0.0, -0.2, 0.0]), np.array([0, 0, 1.0]))
    truth = render(mesh, K, w2c, w, h).mask.reshape(h, w)
    rng = np.random.default_rng(3)
    back = cv2.GaussianBlur(rng.integers(40, 220, (h, w, 3)).astype(np.uint8), (7, 7), 2)
    body = np.clip(np.array([200, 90, 60]) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    img = np.where(truth[..., None], body, back)
    small = cv2.resize(truth.astype(np.float32), (w // 2, h // 2), interpolation=cv2.INTER_AREA) > 0.5

    plain = edge_at_size(img, small, AutoMaskSettings(edge_band=0))
    sharp = edge_at_size(img, small, AutoMaskSettings(edge_band=2))
    assert (plain == (cv2.resize(small.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_LINEAR) > 127)).all()
    assert (sharp ^ truth).sum() * 2 <= (plain ^ truth).sum()
    stick_px = truth & (render(stick, K, w2c, w, h).mask.reshape(h, w))
    assert stick_px.sum() > 500 and (sharp & stick_px).sum() >= 0.99 * stick_px.sum()
    # a mask already at the photo's size has no staircase: it is returned as it is
    assert (edge_at_size(img, truth, AutoMaskSettings(edge_band=2)) == truth).all()


def test_nearness_is_the_median_distance_over_each_cameras_clipped() -> None:
    from pipeline.geometry.silhouettes import nearness

    centre = np.array([0.1, -0.2, 0.3])
    eyes = centre + np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 5.0], [1.0, 0, 0], [0, -0.5, 0]])
    w2cs = np.array([look_at(e, centre, np.array([0, 1.0, 0.1])) for e in eyes])
    dist = [np.linalg.norm(e - centre) for e in eyes]
    expect = [min(3.0, max(1.0, float(np.median(dist)) / d)) for d in dist]
    assert np.allclose(nearness(w2cs, centre, 3.0), expect)
    assert np.allclose(nearness(w2cs, centre, 1.0), 1.0)
    with pytest.raises(ValueError, match="at least 1"):
        nearness(w2cs, centre, 0.5)


def body_and_tube_views(w: int, h: int, f: float):
    """A box with a tube sticking out of it seen by three cameras at about 4 m and one at 1.6 m (intrinsics f, w x h):
    the mesh, Ks (4, 3, 3), w2cs (4, 4, 4), the box's silhouettes and the tube's pixels outside them (4 (h, w) bool
    each)."""
    body = trimesh.creation.box(extents=[0.6, 0.6, 0.6])
    tube = trimesh.creation.cylinder(radius=0.045, height=0.8)
    tube.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    tube.apply_translation([0.55, 0.0, 0.0])
    mesh = trimesh.util.concatenate([body, tube])
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    target = np.array([0.35, 0.0, 0.0])
    eyes = [np.array([0.35, -4.0, 0.4]), np.array([0.35, -4.0, -0.4]), np.array([0.0, -4.2, 0.0]),
            np.array([0.55, -1.6, 0.0])]
    w2cs = np.array([look_at(e, target, np.array([0, 0, 1.0])) for e in eyes])
    bodies = [render(body, K, w2c, w, h).mask.reshape(h, w) for w2c in w2cs]
    tubes = [render(tube, K, w2c, w, h).mask.reshape(h, w) & ~b for w2c, b in zip(w2cs, bodies)]
    return mesh, np.repeat(K[None], 4, axis=0), w2cs, bodies, tubes


def test_a_near_view_gains_a_tube_as_wide_as_its_nearness_allows() -> None:
    """A tube sticking out of a body is 'thin' for thin_width of the long side in a view at the median distance.
    A view 2.5 times nearer sees it 2.5 times wider: with the width scaled by nearness it joins that view's
    silhouette, with the same width everywhere (thin_near_scale 1) it does not."""
    from pipeline.geometry.silhouettes import add_thin_parts

    w = 480
    mesh, Ks, w2cs, bodies, tubes = body_and_tube_views(w, 360, 400.0)
    widths = [int(t.sum(0).max()) for t in tubes]
    s = SilhouetteSettings(thin_samples=400_000)
    assert max(widths[:3]) < s.thin_width * w < widths[3] < 2.5 * s.thin_width * w, widths
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    scaled, _ = add_thin_parts(bodies, v, f, Ks, w2cs, s)
    flat, _ = add_thin_parts(bodies, v, f, Ks, w2cs, dataclasses.replace(s, thin_near_scale=1.0))
    gained = [(m & t).sum() / t.sum() for m, t in zip(scaled, tubes)]
    assert min(gained) > 0.8, gained  # the far views' tubes as before, the near view's too
    assert (flat[3] & tubes[3]).sum() < 0.2 * tubes[3].sum()
    assert all((a == b).all() for a, b in zip(scaled[:3], flat[:3]))


def test_thin_parts_joined_to_photo_size_silhouettes_are_cut_to_the_photos_edge() -> None:
    """The thin parts are drawn at the working size (here 240 px, the photos 480 px), from a fused outline closed by
    a pixel, so they stand wider than the tube. Given the photos, the views that gained a part have their edge cut
    again at the photo's size: fewer wrong pixels than the parts as drawn, and the tube still in."""
    from pipeline.geometry.silhouettes import add_thin_parts

    w, h = 480, 360
    mesh, Ks, w2cs, bodies, tubes = body_and_tube_views(w, h, 400.0)
    rng = np.random.default_rng(5)
    photos = []
    for b, tu in zip(bodies, tubes):
        back = cv2.GaussianBlur(rng.integers(30, 120, (h, w, 3)).astype(np.uint8), (5, 5), 1.5)
        img = np.where(b[..., None], np.uint8([200, 190, 60]), back)
        photos.append(np.where(tu[..., None], np.uint8([230, 90, 200]), img).astype(np.uint8))
    s = SilhouetteSettings(thin_samples=400_000, work_size=240)
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    drawn, n = add_thin_parts(bodies, v, f, Ks, w2cs, s)
    cut, _ = add_thin_parts(bodies, v, f, Ks, w2cs, s, rgbs=photos)
    truth = [b | t for b, t in zip(bodies, tubes)]
    assert n == 4
    wrong = lambda masks: sum(int((m ^ g).sum()) for m, g in zip(masks, truth))
    assert wrong(cut) * 2 < wrong(drawn), (wrong(cut), wrong(drawn))
    assert all((m & t).sum() >= 0.95 * t.sum() for m, t in zip(cut, tubes))
    # without an edge band the parts stay as drawn
    kept, _ = add_thin_parts(bodies, v, f, Ks, w2cs, dataclasses.replace(s, edge_band=0.0), rgbs=photos)
    assert all((a == b).all() for a, b in zip(kept, drawn))
