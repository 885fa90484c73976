"""Peer: COLMAP's own dense pipeline (PatchMatch stereo, fusion, screened Poisson) on a posed set, scored like
hotmesh (bench/scoring.py). Needs pycolmap with CUDA (``pycolmap-cuda12``).

    python bench/peer_colmap.py SET [--max-size 960] [--iterations 3] [--geometric] [--tag TAG] [--out DIR]

The set's true poses become a COLMAP model (``pipeline.cameras.camera_files``); PatchMatch gets the depth range of the
ground truth's bounding sphere seen from each camera (COLMAP would take it from sparse points, which a posed set
without SfM does not have). COLMAP knows nothing of the object, so its mesh is cropped to the ground truth's box
(grown by 5 %) and above the table before scoring: the crop favours the peer.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run_bench import card, poses_file  # noqa: E402
from bench.scoring import read_nerf_cameras, score, score_points  # noqa: E402


def colmap_with_ties(cams: list, nbrs: list[list[int]], center: np.ndarray) -> dict[str, str]:
    """A COLMAP text model of posed cameras with one tie point at ``center`` per neighbour pair (i, nbrs[i][k]), so
    that COLMAP's fusion sees the same overlap graph PatchMatch was given. Each image lists the tie's projection as
    its 2-D point. cams: PhotoCamera list; nbrs: per image, source image indices; center (3,)."""
    from pipeline.cameras.camera_files import colmap_text

    files = colmap_text(cams, np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    pairs = sorted({(min(i, j), max(i, j)) for i, js in enumerate(nbrs) for j in js if i != j})
    obs: list[list[tuple[float, float, int]]] = [[] for _ in cams]
    points = []
    for pid, (i, j) in enumerate(pairs, start=1):
        track = []
        for k in (i, j):
            c = cams[k]
            x = c.K @ (c.w2c[:3, :3] @ center + c.w2c[:3, 3])
            track.append(f"{k + 1} {len(obs[k])}")
            obs[k].append((float(x[0] / x[2]), float(x[1] / x[2]), pid))
        points.append(f"{pid} {center[0]:.8g} {center[1]:.8g} {center[2]:.8g} 128 128 128 1 " + " ".join(track))
    lines, k = [], 0
    for line in files["images.txt"].splitlines():
        if line.startswith("#"):
            lines.append(line)
        elif line.strip():
            lines.append(line)
            lines.append(" ".join(f"{x:.3f} {y:.3f} {p}" for x, y, p in obs[k]))
            k += 1
    header = [ln for ln in files["points3D.txt"].splitlines() if ln.startswith("#")][:-1]
    return {"cameras.txt": files["cameras.txt"], "images.txt": "\n".join(lines) + "\n",
            "points3D.txt": "\n".join(header + [f"# Number of points: {len(points)}"] + points) + "\n"}


def depth_map_summary(ws: Path) -> str:
    """What PatchMatch left in a workspace, for an error message: depth and normal map counts per kind."""
    stereo = ws / "stereo"
    parts = [f"{len(list((stereo / d).glob(f'*.{kind}.bin')))} {d} {kind}"
             for d in ("depth_maps", "normal_maps") for kind in ("photometric", "geometric")]
    return ", ".join(parts)


def fuse_and_score(pycolmap, ws: Path, kind: str, row: dict, gt, truth, args, name: str, save) -> None:
    """Fuse one kind of depth map (``photometric`` or ``geometric``) with COLMAP's default fusion options, score the
    cropped points, then screened Poisson on them, and score the cropped mesh; everything lands in ``row``."""
    import trimesh

    fo = pycolmap.StereoFusionOptions()
    fused_path = ws / f"fused-{kind}.ply"
    t0 = time.monotonic()
    pycolmap.stereo_fusion(fused_path, ws, input_type=kind, options=fo, output_type="PLY")
    row["fusion_seconds"] = round(time.monotonic() - t0, 1)
    fused = trimesh.load(fused_path) if fused_path.exists() else None
    row["fused_points"] = 0 if fused is None else int(len(fused.vertices))
    save("running")
    if row["fused_points"] == 0:
        # Poisson on an empty cloud crashes COLMAP (SIGSEGV in the surface trimmer): never call it
        raise RuntimeError(f"fusion produced no points ({depth_map_summary(ws)})")
    lo, hi = gt.bounds[0], gt.bounds[1]
    grow = 0.05 * (hi - lo)
    radius = 0.5 * float(np.linalg.norm(hi - lo))

    def crop(p: np.ndarray) -> np.ndarray:
        """In the GT's box grown by 5 % and above the table: what belongs to the object."""
        return np.all((p >= lo - grow) & (p <= hi + grow), axis=1) & (p[:, 2] > lo[2] + 0.002 * 2 * radius)

    # the fused cloud scored on its own first (precision of its points, recall of the observable GT): Poisson
    # can take minutes, and a run stopped there still has the stereo's figures
    pts = np.asarray(fused.vertices)[crop(np.asarray(fused.vertices))]
    row["fused_points_on_object"] = int(len(pts))
    if len(pts):
        row["points"] = score_points(pts, gt, truth, args.samples)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy2(fused_path, args.keep / f"{name}-colmap-{kind}-fused.ply")
    save("running")
    po = pycolmap.PoissonMeshingOptions()
    if args.poisson_depth is not None:
        po.depth = args.poisson_depth
    row["settings"]["poisson_depth"] = int(po.depth)
    t0 = time.monotonic()
    meshed = ws / f"meshed-{kind}.ply"
    pycolmap.poisson_meshing(fused_path, meshed, options=po)
    row["poisson_seconds"] = round(time.monotonic() - t0, 1)
    mesh = trimesh.load(meshed, process=False, force="mesh")
    mesh.update_faces(crop(mesh.triangles_center))
    mesh.remove_unreferenced_vertices()
    row["faces"] = int(len(mesh.faces))
    row.update(score(mesh, gt, truth, args.samples))
    if args.keep is not None:
        mesh.export(args.keep / f"{name}-colmap-{kind}.ply")
    save("running")


def main() -> None:
    import pycolmap
    import trimesh

    from pipeline.cameras.camera_files import PhotoCamera
    from pipeline.cameras.cameras import camera_centers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("set", type=Path)
    ap.add_argument("--max-size", type=int, default=960, help="PatchMatch max_image_size")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--sources", type=int, default=10, help="source images per reference image")
    ap.add_argument("--geometric", action="store_true", help="geometric consistency (a second pass, ~2x time)")
    ap.add_argument("--poisson-depth", type=int, default=None,
                    help="screened Poisson octree depth (default: COLMAP's, 13); lower is faster and coarser")
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    folder = args.set.resolve()
    truth_path = poses_file(folder) or folder / "transforms.json"
    truth = read_nerf_cameras(truth_path)
    gt = trimesh.load(folder / "gt.ply", force="mesh")
    frames = json.loads(truth_path.read_text())["frames"]
    cams = [PhotoCamera(name=fr["file_path"], width=w, height=h, K=K, dist=(), model="PINHOLE", w2c=w2c)
            for fr, K, w2c, (w, h) in zip(frames, truth.Ks, truth.w2cs, truth.sizes)]
    work = Path(tempfile.mkdtemp(prefix="peer-colmap-"))
    row: dict = {"set": folder.name, "method": "COLMAP PatchMatch + fusion + Poisson", "posed": True,
                 "settings": {"max_image_size": args.max_size, "num_iterations": args.iterations,
                              "geom_consistency": args.geometric, "source_images": args.sources}}
    t_all = time.monotonic()
    tag = args.tag or f"peer-colmap-{folder.name}"
    args.out.mkdir(parents=True, exist_ok=True)

    rows = [row]

    def save(state: str) -> None:
        """The rows as they stand: a run stopped by its time limit keeps the steps it finished."""
        for r in rows:
            r["state"] = r.get("state") if r.get("state") == "error" else state
        (args.out / f"{tag}.json").write_text(json.dumps({"card": card(), "date": time.strftime("%Y-%m-%d"),
                                                          "results": rows}, indent=1))

    save("running")
    current = row  # the row an error belongs to
    try:
        center = 0.5 * (gt.bounds[0] + gt.bounds[1])
        radius = 0.5 * float(np.linalg.norm(gt.bounds[1] - gt.bounds[0]))
        # COLMAP picks source views (PatchMatch's __auto__) and the images fusion walks (Model::
        # GetMaxOverlappingImages) from shared sparse points, which a posed set has none of: with none, fusion has
        # no overlapping images and "could not fuse any points". Give it the views whose rays to the object meet at
        # useful angles, as hotmesh's own stereo picks them, as patch-match.cfg and as one tie point per pair.
        from pipeline.geometry.mvs import neighbour_views

        nbrs = neighbour_views(truth.w2cs, None, None, None, args.sources, center)
        sparse = work / "sparse"
        sparse.mkdir()
        for name, text in colmap_with_ties(cams, nbrs, center).items():
            (sparse / name).write_text(text)
        ws = work / "dense"
        t0 = time.monotonic()
        pycolmap.undistort_images(output_path=ws, input_path=sparse, image_path=folder)
        row["undistort_seconds"] = round(time.monotonic() - t0, 1)
        save("running")
        (ws / "stereo" / "patch-match.cfg").write_text("".join(
            f"{cams[i].name}\n" + ", ".join(cams[j].name for j in nbrs[i]) + "\n" for i in range(len(cams))))
        dist = np.linalg.norm(camera_centers(truth.w2cs) - center, axis=1)
        pm = pycolmap.PatchMatchOptions()
        pm.max_image_size = args.max_size
        pm.num_iterations = args.iterations
        pm.geom_consistency = args.geometric
        pm.depth_min = float(max(1e-3, (dist - 1.2 * radius).min()))
        pm.depth_max = float((dist + 1.2 * radius).max())
        t0 = time.monotonic()
        pycolmap.patch_match_stereo(ws, options=pm)
        row["patch_match_seconds"] = round(time.monotonic() - t0, 1)
        save("running")
        # geometric mode runs an unfiltered photometric pass first (PatchMatchController::Run) and keeps its maps:
        # both are fused and scored, so that one PatchMatch run gives both rows
        kinds = ["geometric", "photometric"] if args.geometric else ["photometric"]
        for kind in kinds:
            if kind != kinds[0]:
                # the first pass of geometric mode: photometric, unfiltered (COLMAP sets filter = false for it)
                current = {"set": row["set"], "method": row["method"], "posed": True,
                           "patch_match_seconds": row["patch_match_seconds"],
                           "settings": {**row["settings"], "geom_consistency": False, "filter": False,
                                        "first_pass_of_geometric_run": True}}
                rows.append(current)
            current["input_type"] = kind
            t0 = time.monotonic()
            fuse_and_score(pycolmap, ws, kind, current, gt, truth, args, folder.name, save)
            current["wall_seconds"] = round(time.monotonic() - (t_all if current is row else t0), 1)
    except Exception as e:  # the row says what broke; the caller's other results stand
        current.update({"state": "error", "error": f"{type(e).__name__}: {e}",
                        "wall_seconds": round(time.monotonic() - t_all, 1)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save("done")
    for r in rows:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
