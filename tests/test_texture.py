"""Textured outputs and the report people open: atlas maths, GLB validity (Khronos glTF-Validator), OBJ+MTL,
quality gates, and the report in headless Chromium with the inlined 3-D viewer."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from pipeline.report.gates import apply_gates
from pipeline.imaging.sampling import sample_texture
from pipeline.appearance.texture import pad_seams, rasterize_atlas, unwrap
from tests.conftest import REPO, SAMPLE

FAST = ["geometry.voxel_resolution=128", "texture.cpu_size=512", "texture.cpu_max_faces=20000", "report.render_size=160",
        "texture.cpu_fit_views=6"]  # the fit is off on the CPU by default; this job runs it through ray casting


def test_atlas_rasterisation_reproduces_the_uv_of_every_texel() -> None:
    uv = np.array([[0.1, 0.1], [0.9, 0.1], [0.9, 0.8], [0.1, 0.8]], dtype=np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    S = 64
    face_id, bary = rasterize_atlas(uv, faces, S)
    ys, xs = np.nonzero(face_id >= 0)
    # the covered texels are those whose centres fall inside the quad (v up: row 0 is v = 1)
    u_c, v_c = (xs + 0.5) / S, 1 - (ys + 0.5) / S
    near = (u_c > 0.1 - 1 / S) & (u_c < 0.9 + 1 / S) & (v_c > 0.1 - 1 / S) & (v_c < 0.8 + 1 / S)
    assert near.all()  # nothing far outside the quad
    expected_count = ((0.8 * S) * (0.7 * S))
    assert abs(len(ys) - expected_count) < 0.1 * expected_count
    # barycentric interpolation of the corners' uv gives back each texel centre
    interp = np.einsum("tk,tkc->tc", bary[ys, xs], uv[faces[face_id[ys, xs]]])
    np.testing.assert_allclose(interp, np.stack([u_c, v_c], 1), atol=1.0 / S)


@pytest.mark.parametrize("pieces", [1, 6])
def test_unwrap_in_pieces_keeps_every_face_once_without_overlap(pieces: int) -> None:
    mesh = trimesh.creation.icosphere(subdivisions=4)  # 5120 faces
    S = 512
    vmap, faces, uv = unwrap(mesh, S, padding=2, pieces=pieces)
    # the atlas's faces are the mesh's faces, each exactly once (seams only split vertices)
    assert len(faces) == len(mesh.faces)
    got = np.sort(vmap[faces], axis=1)
    want = np.sort(np.asarray(mesh.faces), axis=1)
    assert (got[np.lexsort(got.T[::-1])] == want[np.lexsort(want.T[::-1])]).all()
    assert uv.min() >= 0 and uv.max() <= 1
    # no two charts share texels: the rasterised coverage equals the summed uv area
    a, b, c = uv[faces[:, 0]], uv[faces[:, 1]], uv[faces[:, 2]]
    area = 0.5 * np.abs((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))
    face_id, _ = rasterize_atlas(uv, faces, S)
    covered = int((face_id >= 0).sum())
    assert abs(covered - area.sum() * S * S) < 0.05 * area.sum() * S * S
    assert area.sum() > 0.3  # the pieces are packed into one page, not scattered thin


def test_seam_padding_and_bilinear_lookup() -> None:
    tex = np.zeros((16, 16, 3), np.float32)
    covered = np.zeros((16, 16), bool)
    tex[4:8, 4:8] = [1.0, 0.5, 0.25]
    covered[4:8, 4:8] = True
    out = pad_seams(tex, covered, 3)
    np.testing.assert_allclose(out[2, 6], [1.0, 0.5, 0.25], atol=1e-6)  # pushed outward
    np.testing.assert_allclose(out[15, 15], [1.0, 0.5, 0.25], atol=1e-6)  # rest: the mean colour
    ramp = np.tile(np.linspace(0, 1, 8, dtype=np.float32)[None, :, None], (8, 1, 3))
    got = sample_texture(ramp, np.array([[0.5, 0.5]]))
    assert got[0, 0] == pytest.approx(0.5, abs=1e-6)


def charts(size: int, count: int, largest: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An atlas-like texture: ``count`` random rectangles (2 to ``largest`` - 1 texels a side) covered with random
    colours on a ``size`` x ``size`` page, empty elsewhere. -> (tex (S, S, 3) float32, covered (S, S) bool)."""
    rng = np.random.default_rng(seed)
    covered = np.zeros((size, size), bool)
    for y, x in rng.integers(0, size - largest, (count, 2)):
        covered[y:y + rng.integers(2, largest), x:x + rng.integers(2, largest)] = True
    return (rng.random((size, size, 3)) * covered[..., None]).astype(np.float32), covered


def test_seam_padding_in_torch_matches_opencv() -> None:
    """The rings a GPU job runs in torch (here on the CPU; tests/test_gpu.py on CUDA) give OpenCV's colours."""
    from pipeline.appearance.texture import _pad_seams_torch

    tex, covered = charts(64, 12, 9, seed=3)
    want = pad_seams(tex, covered, 4)
    got = _pad_seams_torch(tex, covered, 4, "cpu")
    assert np.abs(got - want).max() < 1e-5
    assert (np.abs(got - tex)[~covered].max(-1) > 0).mean() > 0.5  # the empty texels did change


def _point_colors_reference(V, normals, mesh, images, masks, Ks, w2cs, depth_scale=0.5):
    """Plain numpy, point by point where it matters: the visibility-weighted blend that point_colors vectorises."""
    from pipeline.imaging.sampling import bilinear
    from pipeline.imaging.render import render

    acc, wsum = np.zeros((len(V), 3)), np.zeros(len(V))
    eps = 0.005 * float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))
    for img, m, K, w2c in zip(images, masks, Ks, w2cs):
        H, W = img.shape[:2]
        dw, dh = max(16, int(W * depth_scale)), max(16, int(H * depth_scale))
        depth = render(mesh, np.diag([dw / W, dh / H, 1.0]) @ K, w2c, dw, dh).depth
        center = -w2c[:3, :3].T @ w2c[:3, 3]
        for p in range(len(V)):
            d = center - V[p]
            cos = float(normals[p] @ d / (np.linalg.norm(d) + 1e-12))
            cam = w2c[:3, :3] @ V[p] + w2c[:3, 3]
            if cos <= 0.05 or cam[2] <= 1e-9:
                continue
            u, v = K[0, 0] * cam[0] / cam[2] + K[0, 2], K[1, 1] * cam[1] / cam[2] + K[1, 2]
            if not (0 <= u < W and 0 <= v < H):
                continue
            xd, yd = min(int(u * dw / W), dw - 1), min(int(v * dh / H), dh - 1)
            dmin = min(depth[yd, xd], depth[min(yd + 1, dh - 1), xd], depth[yd, min(xd + 1, dw - 1)])
            if cam[2] > dmin + eps or not m[int(v), int(u)]:
                continue
            acc[p] += cos ** 4 * bilinear(img.astype(np.float32) / 255.0, np.array([[u, v]]))[0]
            wsum[p] += cos ** 4
    return acc, wsum


def test_point_colors_match_a_point_by_point_reference() -> None:
    """The torch port of the photo blend (which runs on the GPU for atlases) against the plain loop, on the
    sample's photos and ground-truth mesh: same colours where seen, same visibility counts."""
    from pipeline.cameras.cameras import intrinsics_for_image, read_transforms
    from pipeline.appearance.colors import point_colors
    from pipeline.io.images import load_rgba

    gt = trimesh.load(SAMPLE / "gt.ply", force="mesh")
    src = read_transforms(SAMPLE / "transforms.json")
    images, masks, Ks, w2cs = [], [], [], []
    for fr in src.frames[:6]:
        rgb, alpha = load_rgba(SAMPLE / fr.name)
        images.append(rgb)
        masks.append(alpha > 127)
        Ks.append(intrinsics_for_image(fr, rgb.shape[1], rgb.shape[0]))
        w2cs.append(fr.w2c)
    pts, fi = trimesh.sample.sample_surface(gt, 400, seed=0)
    nrm = gt.face_normals[fi]
    colors, seen = point_colors(pts, nrm, gt, images, masks, np.array(Ks), np.array(w2cs))
    acc, wsum = _point_colors_reference(pts, nrm, gt, images, masks, np.array(Ks), np.array(w2cs))
    has = wsum > 0
    assert has.mean() > 0.5
    assert np.array_equal(seen > 0, has)
    np.testing.assert_allclose(colors[has], acc[has] / wsum[has, None], atol=2e-3)
    with pytest.raises(ValueError, match=r"\(P, 3\)"):
        point_colors(pts[:, :2], nrm, gt, images, masks, np.array(Ks), np.array(w2cs))


def test_unseen_points_borrow_the_nearest_seen_colour_exactly_at_the_border() -> None:
    """The fill of unseen points against a brute-force nearest neighbour: exact within ``near`` of a seen point;
    further in, a seen point from the random sample, never further than the nearest sampled one."""
    from pipeline.appearance.colors import nearest_seen

    rng = np.random.default_rng(3)
    # a seen cylinder wall (6000 points) and an unseen disc below it: its rim is near the wall, its centre far
    a = rng.uniform(0, 2 * np.pi, 6000)
    seen = np.stack([np.cos(a), np.sin(a), rng.uniform(0.0, 1.0, 6000)], 1)
    r, b = np.sqrt(rng.uniform(0, 1, 3000)), rng.uniform(0, 2 * np.pi, 3000)
    unseen = np.stack([r * np.cos(b), r * np.sin(b), np.full(3000, -0.01)], 1)
    d_all = np.linalg.norm(unseen[:, None] - seen[None], axis=2)
    near = 0.1
    idx = nearest_seen(seen, unseen, near, far_sample=500)
    got = d_all[np.arange(len(unseen)), idx]
    best = d_all.min(1)
    border = best <= near
    assert 50 < border.sum() < len(unseen) - 50  # both cases occur
    np.testing.assert_allclose(got[border], best[border])
    assert (got[~border] > near).all()
    # the far points: the nearest of the same 500-point sample (a brute-force check of the drawn subset)
    pick = np.sort(np.random.default_rng(0).choice(len(seen), 500, replace=False))
    np.testing.assert_allclose(got[~border], d_all[~border][:, pick].min(1))
    # few seen points: all of them are the sample, so every answer is exact
    np.testing.assert_allclose(d_all[np.arange(3000), nearest_seen(seen, unseen, near, far_sample=10_000)], best)
    with pytest.raises(ValueError, match="no seen point"):
        nearest_seen(seen[:0], unseen, near)


def test_gates_remove_small_parts_and_fill_holes() -> None:
    sphere = trimesh.creation.icosphere(3)
    big = trimesh.Trimesh(sphere.vertices, sphere.faces[1:])  # a hole where the first face was
    crumb = trimesh.Trimesh([[0, 0, 0], [0.01, 0, 0], [0, 0.01, 0], [0, 0, 0.01]], [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    crumb.apply_translation([3, 0, 0])
    mesh, gates = apply_gates(trimesh.util.concatenate([big, crumb]))
    by = {g.name: g for g in gates}
    assert by["small components"].status == "fixed" and by["holes"].status == "fixed"
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    assert by["self-intersections"].status == "pass"


def test_non_manifold_edges_are_counted_like_the_row_wise_reference() -> None:
    """Three fins on one edge, two on another, and a closed sphere: the count against np.unique over edge rows."""
    from pipeline.report.gates import non_manifold_edges

    def reference(mesh: trimesh.Trimesh) -> int:
        _, counts = np.unique(np.sort(mesh.edges, axis=1), axis=0, return_counts=True)
        return int((counts > 2).sum())

    sphere = trimesh.creation.icosphere(2)
    assert non_manifold_edges(sphere) == reference(sphere) == 0
    v = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [1, 1, 1], [2, 1, 1]]
    fins = trimesh.Trimesh(v, [[0, 1, 2], [1, 0, 3], [0, 1, 4], [5, 6, 0], [6, 5, 1]], process=False)
    assert non_manifold_edges(fins) == reference(fins) == 1  # the edge 0-1 has three faces, 5-6 two
    both = trimesh.util.concatenate([sphere, fins])
    assert non_manifold_edges(both) == reference(both) == 1
    assert non_manifold_edges(trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), int))) == 0


@pytest.fixture(scope="module")
def textured_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample through the real pipeline (hotmesh process), textured on the CPU."""
    root = tmp_path_factory.mktemp("textured")
    cmd = [sys.executable, "-m", "daemon.cli", "process", str(SAMPLE), "--out", str(root / "out"),
           "--state", str(root / "state"), "--device", "cpu"]
    for s in FAST:
        cmd += ["--set", s]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return root / "out" / "spot"


def test_textured_outputs_are_complete_and_consistent(textured_job: Path) -> None:
    out = textured_job
    stats = json.loads((out / "stats.json").read_text())
    assert stats["texture"]["texture_size"] == 512 and stats["texture"]["textured_faces"] <= 20000
    assert {g["name"] for g in stats["texture"]["gates"]} >= {"holes", "manifold", "watertight", "self-intersections"}
    # GLB: one textured primitive, +Y up (the sample is +Z up), matte material
    glb = trimesh.load(out / "mesh.glb", force="mesh")
    assert isinstance(glb.visual, trimesh.visual.TextureVisuals)
    assert glb.visual.material.baseColorTexture.size == (512, 512)
    ply = trimesh.load(out / "mesh.ply", force="mesh")
    np.testing.assert_allclose(glb.extents, ply.extents[[0, 2, 1]], rtol=0.03)
    # OBJ + MTL + texture.png, loadable together
    assert "map_Kd texture.png" in (out / "mesh.mtl").read_text()
    obj = trimesh.load(out / "mesh.obj", force="mesh")
    assert isinstance(obj.visual, trimesh.visual.TextureVisuals) and len(obj.visual.uv) == len(obj.vertices)
    # textured held-out scores are measured and the grade follows from the thresholds shown
    held = stats["quality"]["heldout"]
    assert held["psnr_mean"] > 15 and 0 < held["ssim_mean"] <= 1 and held["mask_iou_mean"] > 0.9
    assert stats["grade"]["grade"] in ("pass", "warn", "fail")
    html = (out / "report.html").read_text()
    assert re.search(r'id="grade-value">(\w+)<', html).group(1) == stats["grade"]["grade"]
    assert stats["files"]["texture.png"] == (out / "texture.png").stat().st_size
    # the texture fit ran on the CPU (ray casting, 6 views), lowered the pixel error, and the report says so
    fit = stats["texture"]["fit"]
    assert fit["pixels_from"] == "ray casting" and fit["views"] == 6 and fit["rmse_after"] < fit["rmse_before"]
    assert "least-squares fitted" in stats["texture"]["method"]
    m = re.search(r'id="texture-fit">pixel RMSE ([\d.]+) &rarr; ([\d.]+) over (\d+) pixels of 6 ', html)
    # shown to 3 decimals
    assert m and float(m.group(1)) == pytest.approx(fit["rmse_before"], abs=5e-4)
    assert float(m.group(2)) == pytest.approx(fit["rmse_after"], abs=5e-4) and int(m.group(3)) == fit["samples"]
    # mesh.ply carries how many photos saw each vertex; the coverage in stats.json and the page is that of the file
    from pipeline.io.export import read_seen
    from pipeline.report.quality import coverage_share, vertex_areas

    seen = read_seen(out / "mesh.ply")
    assert seen is not None and len(seen) == len(ply.vertices) and seen.max() >= 3
    cov = stats["quality"]["coverage"]
    areas = vertex_areas(np.asarray(ply.vertices), np.asarray(ply.faces))
    if cov["resting_share"] == 0:  # nothing left out as the face the object stands on: the plain area share
        assert cov["share"] == pytest.approx(coverage_share(areas, seen, cov["min_views"]), abs=1e-9)
        assert cov["mean_views"] == pytest.approx(float((areas * seen).sum() / areas.sum()), abs=1e-9)
    else:
        assert cov["share"] == pytest.approx(coverage_share(areas, seen, cov["min_views"]), abs=cov["resting_share"])
    assert re.search(r'id="coverage-share">([\d.]+)%<', html).group(1) == f"{100 * cov['share']:.1f}"
    checks = {c["name"]: c for c in stats["grade"]["checks"]}
    assert {"coverage", "camera_spread", "border_cut", "heldout_iou", "self_intersections"} <= set(checks)
    assert checks["coverage"]["value"] == cov["share"]
    border = stats["quality"]["border"]
    assert re.search(r'id="border-cut">(\d+) / (\d+)<', html).groups() == (str(border["cut"]), str(border["photos"]))
    assert border["photos"] == stats["cameras"]["views"]
    assert stats["what_to_know"] and 'id="know"' in html and stats["viewer"]["origin"] == "shipped with hotmesh"


def _node_tool(name: str) -> bool:
    return shutil.which("node") is not None and (REPO / "node_modules" / name).is_dir()


@pytest.mark.skipif(not _node_tool("gltf-validator"), reason="node + npm's gltf-validator not installed (npm ci)")
def test_glb_passes_the_khronos_validator(textured_job: Path) -> None:
    res = subprocess.run(["node", str(REPO / "tools" / "gltf_validate.js"), str(textured_job / "mesh.glb")],
                         capture_output=True, text=True, timeout=120, env={"NODE_PATH": str(REPO / "node_modules"),
                                                                            "PATH": "/usr/bin:/bin"})
    report = json.loads(res.stdout)
    assert report["numErrors"] == 0 and report["numWarnings"] == 0, report["messages"][:5]
    assert report["info"]["totalTriangleCount"] <= 20000 and report["info"]["maxAttributes"] >= 3


def test_report_opens_offline_in_headless_chromium_and_the_viewer_draws(textured_job: Path, tmp_path: Path) -> None:
    """The viewer is the bundle shipped with the package (no npm); the camera plot draws too."""
    from tools.browser_check import check_page, find_chromium, viewer_pixels

    if find_chromium() is None:
        pytest.skip("no chromium on PATH")
    html = (textured_job / "report.html").read_text()
    assert "<model-viewer" in html and 'src="data:model/gltf-binary;base64,' in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from the network
    res = check_page(textured_job / "report.html", tmp_path / "shot.png")
    assert res["loaded"], res
    assert res["errors"] == [], res["errors"]
    assert res["cameras_drawn"], res
    # the viewer sits at the top of the screenshot (scrolled into view): the model covers part of it
    assert viewer_pixels(tmp_path / "shot.png", (60, 60, 900, 560)) > 0.05


def test_bilinear_weights_match_a_pixel_by_pixel_reference() -> None:
    """The bilinear lookup's sparse matrix (shared by the bake's photo lookups and the texture fit) against plain
    Python: pixel centres at +0.5, clamped at the border."""
    import torch

    from pipeline.imaging.sampling import bilinear_t, bilinear_weights

    rng = np.random.default_rng(3)
    img = rng.random((7, 9, 3))
    uv = rng.random((300, 2)) * [11, 9] - 1  # some beyond the border

    def reference(u: float, v: float) -> np.ndarray:
        x, y = min(max(u - 0.5, 0.0), 8.0), min(max(v - 0.5, 0.0), 6.0)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        x1, y1 = min(x0 + 1, 8), min(y0 + 1, 6)
        fx, fy = x - x0, y - y0
        return ((1 - fx) * (1 - fy) * img[y0, x0] + fx * (1 - fy) * img[y0, x1]
                + (1 - fx) * fy * img[y1, x0] + fx * fy * img[y1, x1])

    expect = np.array([reference(u, v) for u, v in uv])
    idx, w = bilinear_weights(torch.from_numpy(uv), 7, 9)
    np.testing.assert_allclose((img.reshape(-1, 3)[idx.numpy()] * w.numpy()[..., None]).sum(1), expect, atol=1e-9)
    np.testing.assert_allclose(bilinear_t(torch.from_numpy(img), torch.from_numpy(uv)).numpy(), expect, atol=1e-9)
    np.testing.assert_allclose(w.sum(1).numpy(), 1.0, atol=1e-12)


def test_texture_fit_solves_its_least_squares_problem() -> None:
    """Conjugate gradients against a dense solve of the same normal equations (data + prior + smoothness)."""
    import torch

    from pipeline.imaging.sampling import bilinear_weights
    from pipeline.appearance.texture import FitSettings, PixelSamples, fit_texture

    rng = np.random.default_rng(5)
    S, M = 6, 60
    t0 = np.full((S, S, 3), 0.5, dtype=np.float32)
    covered = np.ones((S, S), dtype=bool)
    covered[:, 0] = False  # a gutter column: no smoothness pairs into it
    uv = (rng.random((M, 2)) * S).astype(np.float32)
    rgb = (0.35 + 0.3 * rng.random((M, 3))).astype(np.float32)
    weight = (0.5 + rng.random(M)).astype(np.float32)
    fs = FitSettings(iterations=200, prior=0.2, smooth=0.7)
    fitted, info = fit_texture(t0, PixelSamples(uv, rgb, weight, np.zeros(M, np.int32)), covered, fs)

    idx, w = bilinear_weights(torch.from_numpy(uv), S, S)
    A = np.zeros((M, S * S))
    for m in range(M):
        for k in range(4):
            A[m, int(idx[m, k])] += float(w[m, k])
    ref = np.unique(idx.numpy())
    A = A[:, ref]
    pos = {int(t): j for j, t in enumerate(ref)}
    Lp = np.zeros((len(ref), len(ref)))
    for r in range(S):
        for c in range(S):
            for r2, c2 in ((r, c + 1), (r + 1, c)):
                p, q = r * S + c, r2 * S + c2
                if r2 < S and c2 < S and p in pos and q in pos and covered[r, c] and covered[r2, c2]:
                    a, b = pos[p], pos[q]
                    Lp[a, a] += 1
                    Lp[b, b] += 1
                    Lp[a, b] -= 1
                    Lp[b, a] -= 1
    N = A.T @ (weight[:, None] * A) + fs.prior * np.eye(len(ref)) + fs.smooth * Lp
    d = np.linalg.solve(N, A.T @ (weight[:, None] * (rgb - A @ t0.reshape(-1, 3)[ref])))
    expect = t0.reshape(-1, 3).copy()
    expect[ref] = np.clip(expect[ref] + d, 0, 1)
    np.testing.assert_allclose(fitted.reshape(-1, 3), expect, atol=2e-4)
    assert info["rmse_after"] < info["rmse_before"]
    with pytest.raises(ValueError, match="prior > 0 or smooth > 0"):
        fit_texture(t0, PixelSamples(uv, rgb, weight, np.zeros(M, np.int32)), covered, FitSettings(prior=0, smooth=0))


def test_texture_fit_beats_the_bake_on_held_out_views_of_a_misplaced_surface() -> None:
    """A sphere textured with a procedural pattern, reconstructed 3 % off its true radius in places: the fitted
    texture reproduces the training photos better than the bake and generalises to views it never saw."""
    from pipeline.imaging.render import look_at, render
    from pipeline.appearance.texture import FitSettings, TextureSettings, bake, build_atlas, fit_texture, pixel_samples_raycast

    gt = trimesh.creation.icosphere(subdivisions=5, radius=1.0)
    V = gt.vertices
    colors = np.stack([0.5 + 0.4 * np.sin(16 * V[:, 0]) * np.cos(15 * V[:, 1]), 0.5 + 0.4 * np.sin(7 * V[:, 2]),
                       0.5 + 0.3 * np.cos(4 * V[:, 0] + 3 * V[:, 1])], 1)
    S, f = 128, 150.0
    K = np.array([[f, 0, S / 2], [0, f, S / 2], [0, 0, 1.0]])
    rng = np.random.default_rng(0)
    w2cs = []
    for _ in range(24):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        w2cs.append(look_at(3.5 * d, np.zeros(3), np.array([0, 0, 1.0]) if abs(d[2]) < 0.9 else np.array([0, 1.0, 0])))
    w2cs = np.array(w2cs)
    Ks = np.repeat(K[None], len(w2cs), 0)
    shots = [render(gt, K, w2c, S, S, colors) for w2c in w2cs]
    imgs = [(o.rgb * 255).round().astype(np.uint8) for o in shots]
    masks = [o.mask for o in shots]
    rec = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    rec.vertices *= 1.0 + 0.03 * np.sin(3 * rec.vertices[:, :1])
    train = [i for i in range(24) if i % 6]
    held = [i for i in range(24) if i % 6 == 0]
    ts = TextureSettings(size=256, atlas_pieces=1)
    atlas = build_atlas(rec, ts)
    baked, _ = bake(atlas, rec, [imgs[i] for i in train], [masks[i] for i in train], Ks[train], w2cs[train], ts)
    samples = pixel_samples_raycast(atlas, [imgs[i] for i in train], [masks[i] for i in train], Ks[train],
                                    w2cs[train], ts.size)
    fitted, info = fit_texture(baked, samples, atlas.face_of_texel >= 0, FitSettings())
    mesh = trimesh.Trimesh(atlas.vertices, atlas.faces, process=False)

    def held_out_psnr(tex: np.ndarray) -> float:
        errs = []
        for i in held:
            o = render(mesh, K, w2cs[i], S, S, uv=atlas.uv, texture=(np.clip(tex, 0, 1) * 255).round().astype(np.uint8))
            both = o.mask & masks[i]
            errs.append(((o.rgb[both] - imgs[i][both] / 255.0) ** 2).mean())
        return float(-10 * np.log10(np.mean(errs)))

    assert info["rmse_after"] < 0.95 * info["rmse_before"], info
    gain = held_out_psnr(fitted) - held_out_psnr(baked)
    assert gain > 0.2, gain


def test_texture_fit_out_of_gpu_memory_keeps_the_bake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fit only polishes the bake: a CUDA OOM inside it leaves the baked texture and a note, not a failed job."""
    import logging

    import torch

    import pipeline.stages.texture as geo
    from pipeline.settings import PipelineSettings
    from pipeline.context import JobContext, JobLogAdapter
    from pipeline.imaging.render import look_at, render
    from pipeline.appearance.texture import FitSettings, TextureSettings, build_atlas

    mesh = trimesh.creation.icosphere(subdivisions=2)
    atlas = build_atlas(mesh, TextureSettings(size=64, atlas_pieces=1))
    K = np.array([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]])
    w2c = look_at(np.array([3.0, 0, 0]), np.zeros(3), np.array([0, 0, 1.0]))
    shot = render(mesh, K, w2c, 64, 64)
    baked = np.full((64, 64, 3), 0.5, np.float32)

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(geo, "fit_texture", oom)
    ctx = JobContext(job_id="t", input_dir=tmp_path, work_dir=tmp_path / "w", settings=PipelineSettings(),
                     device="cpu", log=JobLogAdapter(logging.getLogger("hotmesh.test"), {"job_id": "t"}))
    tex, info = geo.fit_bake(ctx, atlas, baked, [np.full((64, 64, 3), 200, np.uint8)], [shot.mask],
                             K[None], w2c[None], TextureSettings(size=64), FitSettings())
    assert tex is baked and "out of GPU memory" in info["skipped"]


def test_an_atlas_laid_out_ahead_is_used_only_for_its_own_mesh_and_settings(tmp_path: Path) -> None:
    """The refinement's last level starts from a mesh whose vertices then move: the layout made from that start
    (in the child) textures the moved mesh, and is refused for other faces, a vertex count or other settings."""
    import logging

    from pipeline.appearance.atlas_ahead import AtlasAhead, AtlasKey, load_layout
    from pipeline.appearance.texture import TextureSettings, build_atlas

    start = trimesh.creation.icosphere(subdivisions=3)
    rng = np.random.default_rng(0)
    moved = trimesh.Trimesh(start.vertices * (1 + 0.01 * rng.standard_normal((len(start.vertices), 1))),
                            start.faces, process=False)
    key = AtlasKey(size=256, padding=2, pieces=4)
    path = tmp_path / "ahead.npz"
    with AtlasAhead(lambda n: key, logging.getLogger("test")) as ahead:
        assert ahead.save(moved.faces, len(moved.vertices), path) == "no mesh was handed over"
        ahead.submit(start.vertices, start.faces)
        assert ahead.save(moved.faces[::-1], len(moved.vertices), path).startswith("the refined mesh's faces differ")
        assert not path.exists()
        assert ahead.save(moved.faces, len(moved.vertices), path) == "saved"
    layout = load_layout(path, moved.faces, len(moved.vertices), key)
    assert layout is not None
    assert load_layout(path, moved.faces[:, ::-1], len(moved.vertices), key) is None
    assert load_layout(path, moved.faces, len(moved.vertices) + 1, key) is None
    assert load_layout(path, moved.faces, len(moved.vertices), AtlasKey(512, 2, 4)) is None
    assert load_layout(tmp_path / "none.npz", moved.faces, len(moved.vertices), key) is None
    # the same layout as unwrapping the start mesh here, and the atlas puts the moved mesh's own vertices on it
    vmap, faces, uv = unwrap(start, 256, 2, 4)
    assert np.array_equal(layout.vmap, vmap) and np.array_equal(layout.faces, faces) and np.allclose(layout.uv, uv)
    atlas = build_atlas(moved, TextureSettings(size=256, padding=2, atlas_pieces=4),
                        (layout.vmap, layout.faces, layout.uv))
    assert np.allclose(atlas.vertices, moved.vertices[layout.vmap])
    assert (atlas.face_of_texel >= 0).mean() > 0.3


def test_a_dead_atlas_child_costs_only_the_head_start(tmp_path: Path) -> None:
    """The child killed (out of memory, say) before the last level hands it the mesh: the refinement's call does not
    raise, and the texture stage is left to unwrap on its own (no layout is saved)."""
    import logging
    import time

    from pipeline.appearance.atlas_ahead import AtlasAhead, AtlasKey

    mesh = trimesh.creation.icosphere(subdivisions=2)
    with AtlasAhead(lambda n: AtlasKey(128, 2, 1), logging.getLogger("test")) as ahead:
        pool = ahead._pool
        assert pool is not None
        deadline = time.monotonic() + 60
        while not getattr(pool, "_processes", None) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in list(pool._processes.values()):
            proc.kill()
            proc.join(10)
        time.sleep(0.5)
        ahead.submit(mesh.vertices, mesh.faces)  # must not raise
        said = ahead.save(mesh.faces, len(mesh.vertices), tmp_path / "ahead.npz")
    assert said == "no mesh was handed over" or said.startswith("failed"), said
    assert not (tmp_path / "ahead.npz").exists()


def test_gates_leave_a_closed_mesh_with_two_vertices_on_one_point_as_it_is() -> None:
    """The refinement can bring two vertices that share a neighbour onto one point (a fold flattened onto the
    floor). The mesh is closed by its connectivity; welding the two would make edges of four faces and open it."""
    from pipeline.geometry.meshing import is_closed_manifold

    sphere = trimesh.creation.icosphere(2)
    v = np.array(sphere.vertices)
    a, b = sphere.faces[0][:2]  # two neighbours: an edge of the mesh
    c = next(int(x) for f in sphere.faces for x in f if (a in f) and x not in (a, b) and b not in f)  # a's other neighbour
    v[c] = v[b]  # b and c, both neighbours of a, now on one point
    mesh = trimesh.Trimesh(v, sphere.faces, process=False)
    welded = trimesh.Trimesh(v, sphere.faces, process=False)
    welded.merge_vertices()
    assert is_closed_manifold(mesh) and not welded.is_watertight  # what welding would do
    out, gates = apply_gates(mesh)
    by = {g.name: g for g in gates}
    assert by["holes"].status == "pass" and by["watertight"].status == "pass", gates
    assert len(out.faces) == len(sphere.faces) and len(out.vertices) == len(sphere.vertices)
