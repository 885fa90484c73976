"""GPU-only checks (skipped on CPU machines; run on the device, output kept under bench/results/)."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from tests.conftest import SAMPLE, data

pytestmark = pytest.mark.gpu


def test_nvdiffrast_coverage_matches_ray_casting() -> None:
    from pipeline.cameras.cameras import intrinsics_for_image, read_transforms
    from pipeline.imaging.raster import Cameras, NvdiffrastRasterizer
    from pipeline.imaging.render import render

    src = read_transforms(SAMPLE / "transforms.json")
    gt = trimesh.load(SAMPLE / "gt.ply")
    r = NvdiffrastRasterizer()
    frames = src.frames[:4]
    K = np.stack([intrinsics_for_image(f, 256, 256) for f in frames])
    w2c = np.stack([f.w2c for f in frames])
    rgb, alpha = r.render(torch.tensor(gt.vertices, dtype=torch.float32, device="cuda"),
                          torch.tensor(gt.faces, dtype=torch.int32, device="cuda"),
                          torch.full((len(gt.vertices), 3), 0.5, device="cuda"),
                          Cameras(K=torch.tensor(K, dtype=torch.float32, device="cuda"),
                                  w2c=torch.tensor(w2c, dtype=torch.float32, device="cuda"), size=(256, 256)))
    for a, k, w in zip(alpha.cpu().numpy(), K, w2c):
        ref = render(gt, k, w, 256, 256).mask
        hard = a > 0.5
        assert (hard & ref).sum() / (hard | ref).sum() > 0.98


def test_one_rasterisation_for_render_and_points_matches_three_calls() -> None:
    """The refinement's step draws its render and the photo-consistency term's surface points in one nvdiffrast
    call: the same images, points and coverage as a render and two positions() calls, and the same gradients."""
    from pipeline.imaging.raster import Cameras, NvdiffrastRasterizer, separate_render_with_points
    from pipeline.imaging.render import look_at

    r = NvdiffrastRasterizer()
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    rng = np.random.default_rng(2)
    eyes = rng.normal(size=(7, 3))
    eyes = 2.5 * eyes / np.linalg.norm(eyes, axis=1, keepdims=True)
    w2c = torch.tensor(np.stack([look_at(e, np.zeros(3), np.array([0, 0, 1.0])) for e in eyes]),
                       dtype=torch.float32, device="cuda")
    K = torch.tensor([[150.0, 0, 64], [0, 150.0, 48], [0, 0, 1]], device="cuda").repeat(7, 1, 1)
    faces = torch.tensor(mesh.faces, dtype=torch.int32, device="cuda")
    colors = torch.tensor(rng.random((len(mesh.vertices), 3)), dtype=torch.float32, device="cuda")
    cams, more = Cameras(K=K[:5], w2c=w2c[:5], size=(96, 128)), Cameras(K=K[5:], w2c=w2c[5:], size=(96, 128))
    outs, grads = [], []
    for draw in (r.render_with_points, lambda *a: separate_render_with_points(r, *a)):
        v = torch.tensor(mesh.vertices, dtype=torch.float32, device="cuda", requires_grad=True)
        o = draw(v, faces, colors, cams, 3, more)
        (o.rgb.sum() + o.alpha.sum() + (o.points * torch.arange(3, device="cuda")).sum()).backward()
        outs.append(o)
        grads.append(v.grad)
    a, b = outs
    assert a.rgb.shape == (5, 96, 128, 3) and a.points.shape == (3, 96, 128, 3)
    assert a.more_points.shape == (2, 96, 128, 3)
    assert a.points.requires_grad and not a.more_points.requires_grad
    for name in ("rgb", "alpha", "points", "more_points"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-5), name
    for name in ("covered", "more_covered"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.covered.float().mean() > 0.2 and torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-3)


def test_gpu_mesh_renderer_matches_the_ray_caster_in_every_output() -> None:
    """mesh_renderer("cuda") stands in for the CPU ray caster in the texture, silhouette and report renders: the same
    coverage, depth, normals, vertex colours and texture lookups, up to the pixels on the silhouette's edge."""
    from pipeline.cameras.cameras import intrinsics_for_image, read_transforms
    from pipeline.imaging.raster import GpuMeshRenderer, mesh_renderer
    from pipeline.imaging.render import render

    gpu = mesh_renderer("cuda")
    assert isinstance(gpu, GpuMeshRenderer)
    src = read_transforms(SAMPLE / "transforms.json")
    gt = trimesh.load(SAMPLE / "gt.ply")
    rng = np.random.default_rng(0)
    colors = rng.random((len(gt.vertices), 3))
    uv = rng.random((len(gt.vertices), 2))
    tex = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    diag = float(np.linalg.norm(gt.extents))
    for f in src.frames[:3]:
        K, w, h = intrinsics_for_image(f, 320, 240), 320, 240
        for kwargs in ({"colors": colors}, {"uv": uv, "texture": tex}, {}):
            a, b = gpu(gt, K, f.w2c, w, h, **kwargs), render(gt, K, f.w2c, w, h, **kwargs)
            both = a.mask & b.mask
            assert both.sum() / (a.mask | b.mask).sum() > 0.98
            assert np.isinf(a.depth[~a.mask]).all() and np.isfinite(a.depth[a.mask]).all()
            assert np.median(np.abs(a.depth[both] - b.depth[both])) < 1e-4 * diag
            same_face = (np.abs(a.normal[both] - b.normal[both]).max(1) < 1e-4).mean()
            assert same_face > 0.97, same_face
            if kwargs:
                assert np.median(np.abs(a.rgb[both] - b.rgb[both])) < 0.02
            assert (a.rgb[~a.mask] == 0).all()
    # a mesh moved in place is a new mesh to the renderer's upload cache
    mesh = gt.copy()
    K, w2c = intrinsics_for_image(src.frames[0], 320, 240), src.frames[0].w2c
    before = gpu(mesh, K, w2c, 320, 240).mask
    mesh.apply_translation([0.3 * diag, 0, 0])
    after = gpu(mesh, K, w2c, 320, 240).mask
    assert (after != before).any() and (after == render(mesh, K, w2c, 320, 240).mask).mean() > 0.99


def test_views_that_fit_refuses_impossible_sizes_early() -> None:
    from pipeline.appearance.refine import views_that_fit

    assert views_that_fit(60, (512, 512), torch.device("cuda")) >= 1
    with pytest.raises(MemoryError, match="GPU memory is free"):
        views_that_fit(60, (200_000, 200_000), torch.device("cuda"))
    # a process capped to a share of the card (as the benchmark emulates a 24 GB card) plans within that share
    dev = torch.device("cuda", torch.cuda.current_device())  # torch's memory-fraction calls want an index
    whole = views_that_fit(1000, (2048, 2048), dev)
    total = torch.cuda.get_device_properties(0).total_memory
    try:
        torch.cuda.set_per_process_memory_fraction(4 * 2 ** 30 / total, dev)
        capped = views_that_fit(1000, (2048, 2048), dev)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
    assert capped < whole and capped <= int(0.6 * 4 * 2 ** 30 // (2048 * 2048 * 400)) + 1, (capped, whole)


def test_gpu_job_refines_spot_render(tmp_path: Path) -> None:
    """The whole job on the GPU: refinement runs through nvdiffrast and keeps or improves the hull's F-score."""
    from daemon.config import build_settings
    from daemon.intake import fingerprint, snapshot
    from daemon.ledger import Ledger
    from daemon.worker import Paths, execute

    folder = data("spot_render")
    rows = {}
    for mode in ("off", "auto"):
        paths = Paths(inbox=folder.parent, outbox=tmp_path / mode / "out", state=tmp_path / mode / "state")
        ledger = Ledger(paths.ledger)
        ledger.create_job(folder.name, fingerprint(snapshot(folder)))
        job = ledger.claim_next("gpu-test")
        settings = build_settings({"refine": {"enabled": mode}, "report": {"gt_samples": 300_000, "fscore_tau": 0.005}})
        assert execute(ledger, paths, job, settings, "cuda") == "done", ledger.get(job.id).error
        rows[mode] = json.loads((paths.outbox / job.id / "stats.json").read_text())
    refined = rows["auto"]
    assert "nvdiffrast" in refined["refine"]["method"]
    # given masks: no photo-consistency term (refine.pair auto)
    assert refined["refine"].get("pair_share_per_level") is None
    assert refined["mesh"]["watertight"]
    assert refined["quality"]["gt"]["fscore"] >= rows["off"]["quality"]["gt"]["fscore"] - 0.01
    # the device run keeps this output as bench/results/gpu-tests-h100.txt
    print(json.dumps({m: {"fscore@0.5%": r["quality"]["gt"]["fscore"], "heldout_iou": r["quality"]["heldout"]["mask_iou_mean"],
                          "heldout_psnr": r["quality"]["heldout"]["psnr_mean"], "refine": r["refine"],
                          "timings": r["timings"]} for m, r in rows.items()}, indent=1))


def test_gpu_texture_is_fitted_through_nvdiffrast_and_beats_the_vertex_colours(tmp_path: Path) -> None:
    """The texture fit on the GPU (pixels found by nvdiffrast, least squares from the bake) lowers the pixel
    error on the training views and the textured GLB reaches 25 dB held-out PSNR on spot_render (the
    vertex-coloured full mesh's number is printed beside it)."""
    from daemon.config import build_settings
    from daemon.intake import fingerprint, snapshot
    from daemon.ledger import Ledger
    from daemon.worker import Paths, execute

    folder = data("spot_render")
    rows = {}
    for enabled in (False, True):
        paths = Paths(inbox=folder.parent, outbox=tmp_path / str(enabled) / "out", state=tmp_path / str(enabled) / "state")
        ledger = Ledger(paths.ledger)
        ledger.create_job(folder.name, fingerprint(snapshot(folder)))
        job = ledger.claim_next("gpu-test")
        settings = build_settings({"texture": {"enabled": enabled},
                                   "report": {"gt_samples": 100_000}})
        assert execute(ledger, paths, job, settings, "cuda") == "done", ledger.get(job.id).error
        rows[enabled] = json.loads((paths.outbox / job.id / "stats.json").read_text())
    tex = rows[True]["texture"]
    assert "least-squares fitted" in tex["method"], tex
    assert tex["fit"]["pixels_from"] == "nvdiffrast", tex["fit"]
    assert tex["fit"]["rmse_after"] < tex["fit"]["rmse_before"]
    assert rows[True]["quality"]["heldout"]["psnr_mean"] >= 25.0
    print(json.dumps({"textured": {"psnr": rows[True]["quality"]["heldout"]["psnr_mean"],
                                   "ssim": rows[True]["quality"]["heldout"]["ssim_mean"], "texture": tex},
                      "vertex_colours": {"psnr": rows[False]["quality"]["heldout"]["psnr_mean"],
                                         "ssim": rows[False]["quality"]["heldout"]["ssim_mean"]}}, indent=1))


def test_pytorch3d_regularisers_run_inside_the_gpu_refinement() -> None:
    """With regulariser weights set, refine() adds pytorch3d's normal-consistency / Laplacian / edge losses on CUDA
    tensors and still pulls a too-big sphere onto a smaller sphere's silhouettes."""
    pytest.importorskip("pytorch3d.loss", reason="pytorch3d is not installed on this machine")
    from pipeline.imaging.raster import NvdiffrastRasterizer
    from pipeline.appearance.refine import RefineSettings, refine
    from pipeline.imaging.render import look_at, render

    target = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    start = trimesh.creation.icosphere(subdivisions=3, radius=1.25)
    size = 128
    K = np.array([[size * 1.2, 0, size / 2], [0, size * 1.2, size / 2], [0, 0, 1.0]])
    rng = np.random.default_rng(0)
    Ks, w2cs, masks, images = [], [], [], []
    for _ in range(12):
        d = rng.normal(size=3)
        w2c = look_at(4 * d / np.linalg.norm(d), np.zeros(3), np.array([0, 0, 1.0]))
        m = render(target, K, w2c, size, size).mask
        Ks.append(K)
        w2cs.append(w2c)
        masks.append(m)
        images.append((m[..., None] * np.array([200, 120, 60])).astype(np.uint8))
    settings = RefineSettings(levels=((128, 120),), start_faces=len(start.faces), w_normal=0.05, w_laplacian=0.05,
                              w_edge=0.01)
    res = refine(np.asarray(start.vertices), np.asarray(start.faces), images, masks, np.array(Ks), np.array(w2cs),
                 NvdiffrastRasterizer(), settings, "cuda")
    assert res.regularisers.startswith("pytorch3d (normal 0.05, laplacian 0.05, edge 0.01)")
    r = np.linalg.norm(res.vertices, axis=1)
    assert 0.95 < np.median(r) < 1.1, np.median(r)  # started at 1.25


def test_an_object_window_refines_a_small_object_closer_through_nvdiffrast() -> None:
    """refine.crop on the GPU: a sphere 0.3 of the photo wide, 4 % too big, ends closer to its silhouettes when
    each photo's window around it is rendered than when the whole photo is (the CPU test's twin)."""
    from pipeline.imaging.raster import NvdiffrastRasterizer
    from pipeline.appearance.refine import RefineSettings, refine
    from tests.test_refine import _far_views

    target = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    Ks, w2cs, masks, imgs = _far_views(target, n=12, size=(384, 512), dist=10.0)
    start = trimesh.creation.icosphere(subdivisions=3, radius=1.04)
    err = {}
    for crop in (False, True):
        s = RefineSettings(levels=((64, 120),), max_faces=20_000, start_faces=20_000, lam=2.0, lr=1e-2,
                           remesh="subdivide", crop=crop)
        res = refine(np.asarray(start.vertices), np.asarray(start.faces), imgs, masks, Ks, w2cs,
                     NvdiffrastRasterizer(), s, "cuda")
        err[crop] = float(np.abs(np.linalg.norm(res.vertices, axis=1) - 1.0).mean())
        assert (res.window_share < 0.6) == crop, res.window_share
    print(err)
    assert err[True] < 0.7 * err[False], err


def test_nvdiffrast_surface_points_and_photo_consistency_on_the_gpu() -> None:
    """The surface points the photo-consistency term warps through lie where rays hit the mesh (as the CPU
    rasteriser's do, tests/test_photoconsistency.py), and the term alone pulls a too-big textured sphere in."""
    from pipeline.imaging.raster import Cameras, NvdiffrastRasterizer
    from pipeline.imaging.render import look_at, render
    from tests.test_photoconsistency import pair_only_refinement

    r = NvdiffrastRasterizer()
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.8)
    size = 200
    K = np.array([[220.0, 0, 100], [0, 220.0, 100], [0, 0, 1]])
    w2c = look_at(np.array([2.5, 1.0, 0.8]), np.zeros(3), np.array([0, 0, 1.0]))
    ref = render(mesh, K, w2c, size, size)
    pts, cover = r.positions(torch.tensor(mesh.vertices, dtype=torch.float32, device="cuda"),
                             torch.tensor(mesh.faces, dtype=torch.int32, device="cuda"),
                             Cameras(K=torch.tensor(K, dtype=torch.float32, device="cuda")[None],
                                     w2c=torch.tensor(w2c, dtype=torch.float32, device="cuda")[None],
                                     size=(size, size)))
    cov = cover[0].cpu().numpy()
    assert (cov & ref.mask).sum() / (cov | ref.mask).sum() > 0.98
    both = cov & ref.mask
    z = (pts[0].cpu().numpy() @ w2c[:3, :3].T + w2c[:3, 3])[..., 2]
    err = np.abs(z[both] - ref.depth[both])
    assert np.median(err) < 1e-4 and np.percentile(err, 99) < 5e-3, (np.median(err), np.percentile(err, 99))
    res = pair_only_refinement(r, "cuda", 128, 60)
    rad = np.linalg.norm(res.vertices, axis=1)
    assert rad.mean() < 1.03 and rad.std() < 0.03, (rad.mean(), rad.std())
    assert res.pair_share_per_level[0] > 0.2


def test_gpu_job_on_photos_of_three_shapes(tmp_path: Path) -> None:
    """Portrait and 16:9 photos among 4:3 ones through the GPU path: CUDA SIFT reads the turned copies, and the
    refinement, the texture fit and the report's renders each take every photo at its own size (the CPU test's
    twin, which has no refinement)."""
    from tests.scenes import mixed_capture_job

    got = mixed_capture_job(tmp_path, "cuda")
    stats = got.pop("stats")
    print(got)
    assert stats["refine"]["method"].startswith("differentiable rendering")
    assert "least-squares fitted" in stats["texture"]["method"], stats["texture"]["method"]
    # the GPU path's overlaps ran: the atlas laid out during the refinement (used only for the very mesh it was made
    # for: where the quality gates had to mend the refined mesh, the texture stage unwraps the mended one), its
    # texels found by nvdiffrast
    mended = any(g["status"] != "pass" for g in stats["texture"]["gates"] if g["name"] in ("small components", "holes"))
    atlas = "unwrapped here" if mended else "laid out during the refinement"
    assert stats["texture"]["atlas"] == atlas, stats["texture"]
    assert stats["texture"]["texels"] == "nvdiffrast", stats["texture"]["texels"]
    assert got["fscore@1%"] > 0.8, got


def test_nvdiffrast_finds_the_same_texture_pixels_as_the_ray_caster() -> None:
    """The GPU path of the texture fit samples the same pixels at the same UVs as the Embree ray caster that the
    held-out scores use (up to pixels on triangle edges)."""
    from pipeline.imaging.render import look_at
    from pipeline.appearance.texture import TextureSettings, build_atlas, pixel_samples_nvdiffrast, pixel_samples_raycast

    mesh = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    atlas = build_atlas(mesh, TextureSettings(size=256, atlas_pieces=1))
    S, f = 96, 110.0
    K = np.array([[f, 0, S / 2], [0, f, S / 2], [0, 0, 1.0]])
    w2cs = np.array([look_at(np.array([3.0, 0.5 * i, 1.0]), np.zeros(3), np.array([0, 0, 1.0])) for i in range(3)])
    imgs = [np.full((S, S, 3), 40 * (i + 1), np.uint8) for i in range(3)]
    masks = [np.ones((S, S), bool)] * 3
    a = pixel_samples_raycast(atlas, imgs, masks, np.repeat(K[None], 3, 0), w2cs, 256, view_power=1.0)
    b = pixel_samples_nvdiffrast(atlas, imgs, masks, np.repeat(K[None], 3, 0), w2cs, 256, view_power=1.0)
    assert abs(len(a.uv) - len(b.uv)) <= 0.01 * len(a.uv)
    for v in range(3):
        ua, ub = a.uv[a.view == v], b.uv[b.view == v]
        assert abs(np.median(ua, 0) - np.median(ub, 0)).max() < 1.0
    assert abs(a.weight.mean() - b.weight.mean()) < 0.01


def _uv_pixels(uv: np.ndarray, size: int) -> np.ndarray:
    """UV (V, 2) -> continuous texel coordinates (V, 2) (x right, y down), as the atlas's rows are stored."""
    return np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], 1).astype(np.float64)


def _texel_barycentrics(px: np.ndarray, faces: np.ndarray, face: np.ndarray, ys: np.ndarray, xs: np.ndarray
                        ) -> np.ndarray:
    """Plain reference: the barycentrics (T, 3), unclipped, of texel centres (ys, xs) in the triangles ``face`` of
    the texel-space corners px (V, 2)."""
    a, b, c = (px[faces[face, k]] for k in range(3))
    q = np.stack([xs + 0.5, ys + 0.5], 1)
    m = np.stack([b - a, c - a], 2)  # (T, 2, 2): columns are the edges from the first corner
    l12 = np.linalg.solve(m, (q - a)[..., None])[..., 0]
    return np.concatenate([1 - l12.sum(1, keepdims=True), l12], 1)


def test_atlas_texels_found_by_nvdiffrast_match_the_polygon_fill() -> None:
    """The GPU's texel search gives each texel whose centre lies in a face that face, up to the rasteriser's
    sub-texel snapping at the edges, with barycentrics that put the texel where its centre is (both checked against
    a plain solve); the polygon fill's face wherever the centre is clear of an edge (at an edge the fill gives the
    texel to whichever face it drew last); and a covered area equal to the UV triangles' area."""
    from pipeline.appearance.texture import rasterize_atlas, rasterize_atlas_gpu, unwrap

    mesh = trimesh.creation.icosphere(subdivisions=5)  # 20480 faces, many of them a few texels wide
    S = 1024
    _, faces, uv = unwrap(mesh, S, padding=2, pieces=8)
    fc, _ = rasterize_atlas(uv, faces, S)
    fg, bg = rasterize_atlas_gpu(uv, faces, S)
    assert fg.shape == (S, S) and bg.shape == (S, S, 3) and fg.dtype == np.int32
    px = _uv_pixels(uv, S)
    ys, xs = np.nonzero(fg >= 0)
    tri = px[faces[fg[ys, xs]]]  # (T, 3, 2)
    ref = _texel_barycentrics(px, faces, fg[ys, xs], ys, xs)
    # how far outside its face a texel's centre lies, in texels: -barycentric x the corner's height over its edge
    edge = np.linalg.norm(tri[:, [2, 0, 1]] - tri[:, [1, 2, 0]], axis=2)  # the edge opposite each corner
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area2 = np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    outside = np.max(-ref * (area2[:, None] / edge), axis=1)
    assert outside.max() < 0.05, "a texel was given a face that does not hold its centre"
    where = np.einsum("tk,tkc->tc", bg[ys, xs].astype(np.float64), tri)
    assert np.abs(where - np.stack([xs + 0.5, ys + 0.5], 1)).max() < 0.05
    # where the fill's face holds the centre well inside, the GPU found the same face
    cy, cx = np.nonzero(fc >= 0)
    inner = _texel_barycentrics(px, faces, fc[cy, cx], cy, cx).min(1) > 0.05
    assert inner.sum() > 0.3 * len(cy)
    assert (fg[cy[inner], cx[inner]] == fc[cy[inner], cx[inner]]).mean() > 0.999
    a, b, c = uv[faces[:, 0]], uv[faces[:, 1]], uv[faces[:, 2]]
    area = 0.5 * np.abs((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])).sum()
    assert abs(len(ys) - area * S * S) < 0.01 * area * S * S


def test_gpu_dense_job_on_a_capture_with_a_wall_behind(tmp_path: Path) -> None:
    """The dense method end to end on the GPU (depth maps, fusion, refinement with estimated silhouettes, texture
    fit): posed photos of an object on a table with a wall right behind it, close-ups and a camera inside."""
    from daemon.config import build_settings
    from daemon.intake import fingerprint, snapshot
    from daemon.ledger import Ledger
    from daemon.worker import Paths, execute
    from bench.scoring import read_nerf_cameras, score
    from tests.scenes import SceneSpec, render_scene

    scene = render_scene(tmp_path / "inbox" / "wall", SceneSpec(size=(320, 240)))
    paths = Paths(scene.parent, tmp_path / "outbox", tmp_path / "state")
    ledger = Ledger(paths.ledger)
    ledger.create_job("wall", fingerprint(snapshot(scene)))
    job = ledger.claim_next("test")
    settings = build_settings({"report": {"gt_samples": 50_000}})
    state = execute(ledger, paths, job, settings, "cuda")
    assert state == "done", ledger.get("wall").error
    stats = json.loads((paths.outbox / "wall" / "stats.json").read_text())
    assert stats["geometry"]["method"].startswith("dense multi-view stereo") and stats["geometry"]["note"] is None
    assert stats["refine"]["method"].startswith("differentiable rendering")
    assert stats["refine"]["estimated_silhouettes"] > 10 and stats["refine"]["view_gains"]
    assert stats["refine"]["smoothness"] == settings.pipeline.refine.estimated_smoothness
    # photo-consistency between neighbouring photos is on where the silhouettes were estimated (refine.pair auto),
    # and compares most of each level's object pixels
    shares = stats["refine"]["pair_share_per_level"]
    assert shares and len(shares) == len(stats["refine"]["levels"]) and min(shares) > 0.2, shares
    # the dense path's own timings (fusion and meshing per step)
    print(json.dumps(stats["geometry"]["dense"]["seconds"]))
    # a closed, manifold surface from fusion, so that refinement could remesh it isotropically
    assert stats["geometry"]["dense"]["watertight"], stats["geometry"]["dense"]
    # the blur scales with the grid: 0.8 voxel (the CPU's) left 38-42 handles here, 1.2 voxels 5 (measured on a CPU
    # from the same kind of depth maps)
    assert stats["geometry"]["dense"]["handles"] <= 10, stats["geometry"]["dense"]["handles"]
    assert stats["refine"]["remesh"] == "isotropic", stats["refine"]["remesh"]
    assert stats["mesh"]["watertight"] and stats["mesh"]["winding_consistent"], stats["mesh"]
    # scored against what the cameras can see (the object's back faces the wall 3 cm away and its neck runs inside
    # the body and head: no photo shows them), at the job's own cameras, which are the true ones here
    truth = read_nerf_cameras(scene / "transforms.json", scene / "images")
    mesh = trimesh.load(paths.outbox / "wall" / "mesh.ply", force="mesh")
    got = score(mesh, trimesh.load(scene / "gt.ply", force="mesh"), truth, 200_000)
    print(json.dumps({"observable": got, "whole_gt": stats["quality"]["gt"]}))
    assert got["fscore@1%"] > 0.8 and got["fscore@0.5%"] > 0.7, (got, stats["geometry"]["dense"],
                                                                     stats["refine"]["losses"][-3:], stats["mesh"])


def torch_fusion_checks(device: str = "cuda", views: int = 60, width: int = 960,
                        grids: tuple[int, ...] = (400, 511)) -> dict:
    """The body of the test below, for any device and size (run on the CPU with a small size to check the test
    itself: ``torch_fusion_checks("cpu", 4, 128, (48,))``). Returns the timings per grid."""
    import cv2


    from pipeline.geometry.carve import CarveSettings, hull_field, mask_sdf
    from pipeline.geometry.hull import grid_hull_tensor
    from pipeline.geometry.fusion import Grid, Tsdf, combined_field_tensor, fuse_tensors
    from pipeline.geometry.meshing import marching_cubes_on_device, marching_cubes_tensor
    from pipeline.geometry.mvs import DepthMap
    from tests.fusion_reference import combined_field_reference, fuse_reference, hull_field_reference
    from tests.test_dense import _textured_sphere_views
    from tests.test_fusion_torch import _compare, noisy_depth_maps
    from tests.test_meshing_torch import compare_noisy_with_skimage, compare_with_skimage, ellipsoid_field

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    maps = noisy_depth_maps()
    grid = Grid.over_box(np.full(3, -1.4), np.full(3, 1.4), 64)
    trunc = 3 * grid.voxel
    ref = fuse_reference(maps, grid, trunc, solid_depth=0.5)
    v, w, b, hd = fuse_tensors(maps, grid, trunc, device=device, solid_depth=0.5)
    _compare(Tsdf(v.cpu().numpy(), w.cpu().numpy(), b.cpu().numpy(), grid, trunc, hd.cpu().numpy()), ref)
    _, Ks, w2cs, _, _, sil = _textured_sphere_views(n=6)
    sdfs = [mask_sdf(m) for m in sil]
    pts = grid.points(0, grid.dims[0], torch.device("cpu"))
    cs = CarveSettings(outlier_views=1)
    Kt, Wt = torch.as_tensor(Ks, dtype=torch.float32), torch.as_tensor(w2cs, dtype=torch.float32)
    hull_ref = hull_field_reference(pts, Kt, Wt, [torch.from_numpy(d) for d in sdfs], cs)
    hull_gpu = hull_field(pts.to(device), Kt.to(device), Wt.to(device),
                          [torch.from_numpy(d).to(device) for d in sdfs], cs)
    assert torch.allclose(hull_gpu.cpu(), hull_ref, rtol=1e-4, atol=1e-5)
    hull = hull_ref.reshape(grid.dims).numpy()
    planes = [(np.array([0.0, 0.0, 1.0]), -0.8)]
    kw = dict(min_band=0.5, min_free=0.7, hull_slack=trunc, planes=planes, support_margin=grid.voxel,
              override_band=1.0, solid_hidden=0.5)
    f_ref = combined_field_reference(ref, hull, **kw)
    t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    f_gpu = combined_field_tensor(t(ref.values), t(ref.weight), t(ref.band), t(hull), grid, trunc,
                                  hidden=t(ref.hidden), **kw)
    assert np.abs(f_gpu.cpu().numpy() - f_ref).max() < 1e-5
    try:
        import pytorch3d.ops  # noqa: F401

        has_p3d = True
    except ImportError:  # an optional dependency: marching cubes then runs in skimage (checked on the CPU in CI)
        has_p3d = False
    if has_p3d:
        compare_noisy_with_skimage(f_ref * trunc, grid.origin, grid.voxel, device)
        compare_with_skimage(*ellipsoid_field(), device)

    # job-sized: 60 views of 960 x 720 (the small scene's maps scaled up, cameras repeated)
    big, big_sdfs, big_K, big_w2c = [], [], [], []
    for i in range(views):
        dm = maps[i % len(maps)]
        s = width / dm.depth.shape[1]
        size = (width, int(round(dm.depth.shape[0] * s)))
        K = dm.K.copy()
        K[:2] *= s
        r = lambda a: cv2.resize(a, size, interpolation=cv2.INTER_NEAREST)  # noqa: E731
        big.append(DepthMap(r(dm.depth), r(dm.score), K, dm.w2c, free=r(dm.free), far=dm.far))
        big_sdfs.append(mask_sdf(r(sil[i % len(sil)].astype(np.uint8)) > 0))
        big_K.append(K)
        big_w2c.append(dm.w2c)
    timings = {}
    boxes = [(np.array([-1.4, -1.4, -0.85]), np.array([1.4, 1.35, 0.85])), (np.full(3, -1.4), np.full(3, 1.4))]
    for (lo, hi), res in zip(boxes, grids):
        name = f"{res} voxels"
        g = Grid.over_box(lo, hi, res)
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else 0
        steps = {}
        t0 = time.monotonic()
        v, w, b, hd = fuse_tensors(big, g, 3 * g.voxel, device=device, solid_depth=0.05 * float((hi - lo).max()))
        sync()
        steps["fusion"] = time.monotonic() - t0
        t0 = time.monotonic()
        h = grid_hull_tensor(g, np.array(big_K), np.array(big_w2c), big_sdfs, 0.03, device)
        sync()
        steps["hull"] = time.monotonic() - t0
        t0 = time.monotonic()
        f = combined_field_tensor(v, w, b, h, g, 3 * g.voxel, hidden=hd, **{**kw, "hull_slack": 3 * g.voxel})
        del v, w, b, hd, h
        f *= 3 * g.voxel
        sync()
        steps["field"] = time.monotonic() - t0
        t0 = time.monotonic()
        mc = marching_cubes_tensor if has_p3d else marching_cubes_on_device
        mesh = mc(f, g.origin, g.voxel)
        steps["marching_cubes"] = time.monotonic() - t0
        del f
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30 if cuda else 0.0
        if cuda:
            torch.cuda.empty_cache()
        timings[name] = {"grid": list(g.dims), "marching_cubes_by": "pytorch3d" if has_p3d else "skimage",
                         "faces": len(mesh.faces), "watertight": bool(mesh.is_watertight),
                         "peak_gib": round(peak, 2), **{k: round(x, 2) for k, x in steps.items()}}
        assert peak <= 8.0, timings
        assert not cuda or steps["fusion"] + steps["hull"] + steps["field"] < 10.0, timings
    return timings


def test_torch_fusion_on_cuda_matches_the_cpu_reference_and_is_fast() -> None:
    """TSDF fusion, hull field, field combination and marching cubes on CUDA against the CPU implementations they
    replaced (tests/fusion_reference.py) and skimage, on the small noisy sphere scene of tests/test_fusion_torch.py;
    then the same steps timed on a job-sized grid (about 400 x 400 x 250 voxels, 60 views of 960 x 720 px) and a
    512^3 grid within 8 GB of GPU memory. Prints the seconds."""
    print(json.dumps(torch_fusion_checks("cuda")))


def test_poisson_points_and_votes_on_the_gpu_match_the_cpu() -> None:
    """The dense path's oriented points and silhouette votes run on the job's device: the same numbers there."""
    from pipeline.geometry.mvs import DepthMap
    from pipeline.geometry.poisson import depth_normals, silhouette_votes

    rng = np.random.default_rng(3)
    ys, xs = np.mgrid[0:240, 0:320]
    depth = (2.0 + 0.2 * np.sin(xs / 20.0) + 0.1 * np.cos(ys / 15.0)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.1] = 0
    K = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    w2c = np.eye(4)
    w2c[:3, 3] = [0.1, -0.1, 0.2]
    dm = DepthMap(depth=depth, score=np.ones_like(depth), K=K, w2c=w2c)
    p_cpu, n_cpu = depth_normals(dm, "cpu")
    p_gpu, n_gpu = depth_normals(dm, "cuda")
    np.testing.assert_allclose(p_gpu, p_cpu, atol=1e-9)
    np.testing.assert_allclose(n_gpu, n_cpu, atol=1e-9)
    masks = [rng.random((240, 320)) < 0.7 for _ in range(4)]
    Ks, w2cs = np.array([K] * 4), np.array([np.eye(4), w2c, np.linalg.inv(w2c), np.eye(4)])
    np.testing.assert_allclose(silhouette_votes(p_cpu, masks, Ks, w2cs, "cuda"),
                               silhouette_votes(p_cpu, masks, Ks, w2cs, "cpu"))


def test_unseen_evidence_through_nvdiffrast_matches_the_ray_caster() -> None:
    """The fill's visibility (best facing cosine, rim counts) renders its depths with nvdiffrast on a GPU: the same
    verdict per vertex as Embree's, but for a few vertices on depth edges, and the same free vertices within 1 %."""
    from pipeline.geometry.unseen import settle_unseen, view_evidence
    from pipeline.imaging.raster import GpuMeshRenderer, mesh_renderer
    from pipeline.imaging.render import look_at, render

    gpu = mesh_renderer("cuda")
    assert isinstance(gpu, GpuMeshRenderer)
    # a slab on four legs: its underside is seen by no camera, its legs' inner faces only grazing
    slab = trimesh.creation.box(extents=[0.6, 0.6, 0.08])
    slab.apply_translation([0, 0, 0.3])
    legs = [trimesh.creation.cylinder(radius=0.03, height=0.3, sections=16) for _ in range(4)]
    for leg, (x, y) in zip(legs, [(-0.25, -0.25), (-0.25, 0.25), (0.25, -0.25), (0.25, 0.25)]):
        leg.apply_translation([x, y, 0.15])
    mesh = trimesh.util.concatenate([slab.subdivide().subdivide().subdivide().subdivide(), *legs])
    K = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    w2cs = np.array([look_at(np.array([2.0 * np.cos(a), 2.0 * np.sin(a), 0.3 + z]), np.array([0, 0, 0.2]),
                             np.array([0.0, 0, 1])) for a, z in zip(np.linspace(0, 2 * np.pi, 12, endpoint=False),
                                                                   [0.2, 0.8, 1.4] * 4)])
    Ks, sizes = np.array([K] * len(w2cs)), [(320, 240)] * len(w2cs)
    masks = [render(mesh, K, w, 320, 240).mask for K, w in zip(Ks, w2cs)]
    b_cpu, r_cpu = view_evidence(mesh, Ks, w2cs, sizes, masks)
    b_gpu, r_gpu = view_evidence(mesh, Ks, w2cs, sizes, masks, renderer=gpu)
    assert (b_cpu == 0).sum() > 100  # the slab's underside
    assert (np.abs(b_cpu - b_gpu) < 1e-6).mean() > 0.99
    assert (r_cpu == r_gpu).mean() > 0.98
    a = settle_unseen(mesh, Ks, w2cs, sizes, 0.45, masks)
    b = settle_unseen(mesh, Ks, w2cs, sizes, 0.45, masks, renderer=gpu)
    assert a.free.sum() > 100 and (a.free != b.free).mean() < 0.01


def test_seam_padding_on_the_gpu_matches_opencv() -> None:
    from pipeline.appearance.texture import pad_seams
    from tests.test_texture import charts

    tex, covered = charts(256, 40, 17, seed=4)
    assert np.abs(pad_seams(tex, covered, 8, device="cuda") - pad_seams(tex, covered, 8)).max() < 1e-5


def test_depth_map_scores_on_the_gpu_batched_match_the_cpu_one_by_one() -> None:
    """The sweep's scores on CUDA (the sources of one size as one batch) against the CPU's (one by one)."""
    from pipeline.geometry.mvs import MvsSettings, _device_views, _Images
    from tests.test_dense import _textured_sphere_views

    _, Ks, w2cs, grays, _, _ = _textured_sphere_views()
    s = MvsSettings()
    out = {}
    for dev in ("cpu", "cuda"):
        views = [_device_views(g, K, w, 1, torch.device(dev))[0] for g, K, w in zip(grays, Ks, w2cs)]
        imgs = _Images.make(views[4], [views[j] for j in (3, 5, 2)], s.window)
        assert len(imgs.groups) == (1 if dev == "cuda" else 3)
        depths = torch.tensor([2.2, 2.6, 3.0], device=dev)[:, None].expand(-1, grays[4].size)
        out[dev] = imgs.scores(depths, s).cpu()
    assert torch.allclose(out["cpu"], out["cuda"], atol=1e-4)
