"""Benchmark: run the real pipeline on posed data sets and record speed and quality as JSON.

    python bench/run_bench.py [--sets spot_render lego sample] [--set section.key=value ...] [--tag NAME]
                              [--samples 1000000] [--out bench/results]

Each set runs through the same code path as a daemon job (ledger, stages, publish) on a fresh state folder.
Quality: held-out mask IoU / PSNR from the job's own stats, plus Chamfer-L1 and F-score at 1%, 0.5% and 0.2%
of the GT bounding-box diagonal with ``--samples`` area-uniform points per mesh (1M by default: with 100k a GT
mesh scores only F@0.2% ~ 0.77 against itself). Results: bench/results/<tag>.json and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.cli import _parse_sets  # noqa: E402
from daemon.config import load_settings  # noqa: E402

DATA = Path(os.environ.get("HOTMESH_TEST_DATA", REPO.parent / "shared" / "data"))
SETS = {
    "sample": REPO / "samples" / "spot",
    "spot_render": DATA / "spot_render",
    "lego": DATA / "lego",
}


def card() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu} x{os.cpu_count()}"


def training_cameras(folder: Path, heldout: set[str]) -> tuple[Any, Any, list[tuple[int, int]]]:
    """Ks (N, 3, 3), w2cs (N, 4, 4) and (width, height) of the set's views that the job fitted to."""
    import numpy as np
    from PIL import Image

    from pipeline.cameras import intrinsics_for_image, read_pose_source

    src = read_pose_source(folder)
    if src is None:
        raise ValueError(f"{folder}: no poses")
    Ks, w2cs, sizes = [], [], []
    for fr in src.frames:
        if fr.name in heldout:
            continue
        with Image.open(folder / fr.name) as im:
            w, h = im.size
        Ks.append(intrinsics_for_image(fr, w, h))
        w2cs.append(fr.w2c)
        sizes.append((w, h))
    return np.array(Ks), np.array(w2cs), sizes


def gt_metrics(mesh_path: Path, gt_path: Path, samples: int, folder: Path | None = None,
               heldout: set[str] | None = None) -> dict[str, Any]:
    """Scores against the GT as given, and (with the set's folder) against its observable part
    (``pipeline.metrics.observable_scores``: hidden interiors left out of recall, an open scan's holes capped)."""
    import trimesh

    from pipeline.metrics import geometry_scores_multi, observable_scores

    mesh = trimesh.load(mesh_path, process=False, force="mesh")
    gt = trimesh.load(gt_path, force="mesh")
    out: dict[str, Any] = {}
    taus = (0.01, 0.005, 0.002)
    for s in geometry_scores_multi(mesh, gt, samples, taus):
        out[f"fscore@{s.tau_rel * 100:g}%"] = round(s.fscore, 4)
        out["chamfer_l1_rel"] = round(s.chamfer_l1_rel, 6)
    out["normal_consistency"] = round(normal_consistency(mesh, gt, min(samples, 200_000)), 4)
    if folder is not None:
        Ks, w2cs, sizes = training_cameras(folder, heldout or set())
        for s in observable_scores(mesh, gt, Ks, w2cs, sizes, samples, taus):
            out[f"obs_fscore@{s.tau_rel * 100:g}%"] = round(s.fscore, 4)
            out[f"obs_precision@{s.tau_rel * 100:g}%"] = round(s.precision, 4)
            out[f"obs_recall@{s.tau_rel * 100:g}%"] = round(s.recall, 4)
            out["obs_chamfer_l1_rel"] = round(s.chamfer_l1_rel, 6)
    return out


def normal_consistency(mesh, gt, samples: int) -> float:
    """Mean |cos| between each sample's normal and the normal of the nearest GT sample (both directions)."""
    import numpy as np
    import trimesh
    from scipy.spatial import cKDTree

    p, fp = trimesh.sample.sample_surface(mesh, samples, seed=3)
    g, fg = trimesh.sample.sample_surface(gt, samples, seed=4)
    np_, ng = mesh.face_normals[fp], gt.face_normals[fg]
    _, i = cKDTree(g).query(p, workers=-1)
    _, j = cKDTree(p).query(g, workers=-1)
    return float(0.5 * (np.abs((np_ * ng[i]).sum(1)).mean() + np.abs((ng * np_[j]).sum(1)).mean()))


def run_set(name: str, folder: Path, overrides: dict[str, dict[str, Any]], samples: int, device: str,
            keep: Path | None = None) -> dict[str, Any]:
    from daemon.intake import fingerprint, snapshot
    from daemon.ledger import Ledger
    from daemon.worker import Paths, execute

    settings = load_settings(None, environ={}, cli=overrides)
    tmp = Path(tempfile.mkdtemp(prefix=f"hotmesh-bench-{name}-"))
    try:
        paths = Paths(inbox=folder.parent, outbox=tmp / "outbox", state=tmp / "state")
        ledger = Ledger(paths.ledger)
        ledger.create_job(folder.name, fingerprint(snapshot(folder)))
        job = ledger.claim_next("bench")
        if job is None:
            raise RuntimeError("no job claimed")
        t0 = time.monotonic()
        state = execute(ledger, paths, job, settings, device)
        wall = time.monotonic() - t0
        final = ledger.get(job.id)
        row: dict[str, Any] = {"set": name, "state": state, "wall_seconds": round(wall, 2),
                               "error": final.error if final else None}
        if state != "done":
            return row
        stats = json.loads((paths.outbox / job.id / "stats.json").read_text())
        row["stage_seconds"] = {t["stage"]: t["seconds"] for t in stats["timings"]}
        row["report_seconds"] = stats.get("report_seconds")
        row["peak_vram_mb"] = max((t.get("peak_vram_mb") or 0) for t in stats["timings"]) or None
        row["faces"] = stats["mesh"]["faces"]
        row["watertight"] = stats["mesh"]["watertight"]
        held = stats["quality"]["heldout"]
        row["heldout_views"] = held["views"]
        row["heldout_iou"] = None if held["mask_iou_mean"] is None else round(held["mask_iou_mean"], 4)
        row["heldout_psnr"] = None if held["psnr_mean"] is None else round(held["psnr_mean"], 2)
        row["heldout_psnr_frame"] = (None if held.get("psnr_frame_mean") is None
                                     else round(held["psnr_frame_mean"], 2))
        row["heldout_ssim"] = None if held.get("ssim_mean") is None else round(held["ssim_mean"], 4)
        tex = stats.get("texture") or {}
        row["texture"] = {"method": tex.get("method"), "size": tex.get("texture_size"),
                          "faces": tex.get("textured_faces"), "seconds": tex.get("seconds"),
                          "fit": tex.get("fit")}
        row["file_bytes"] = stats.get("files")
        row["grade"] = (stats.get("grade") or {}).get("grade")
        gt = next((folder / n for n in ("gt.ply", "gt.obj", "gt.glb") if (folder / n).exists()), None)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(paths.outbox / job.id / "mesh.ply", keep / f"{name}.ply")
        if gt is not None:
            heldout = {v["name"] for v in held.get("per_view", [])}
            row.update(gt_metrics(paths.outbox / job.id / "mesh.ply", gt, samples, folder, heldout))
        row["refine"] = stats.get("refine") or None
        return row
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["set", "state", "wall_seconds", "faces", "heldout_iou", "heldout_psnr", "fscore@1%", "fscore@0.5%",
            "fscore@0.2%", "chamfer_l1_rel", "obs_fscore@0.2%", "obs_chamfer_l1_rel", "peak_vram_mb"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["sample", "spot_render", "lego"],
                    help=f"names from {sorted(SETS)} or paths to posed job folders")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--tag", default=None, help="result file name (default: pipeline-<device>)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--keep", type=Path, default=None, help="copy each set's published mesh.ply here")
    args = ap.parse_args()

    from daemon.worker import pick_device

    device = pick_device(args.device)
    overrides = _parse_sets(args.set)
    rows = []
    for s in args.sets:
        folder = SETS.get(s, Path(s))
        name = s if s in SETS else folder.name
        print(f"== {name} ({folder})", flush=True)
        row = run_set(name, folder, overrides, args.samples, device, args.keep)
        print(json.dumps(row), flush=True)
        rows.append(row)
        result = {"benchmark": "pipeline", "card": card(), "device": device, "date": time.strftime("%Y-%m-%d"),
                  "overrides": args.set, "samples": args.samples, "results": rows}
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{args.tag or 'pipeline-' + device}.json"
        path.write_text(json.dumps(result, indent=1))  # after every set: a run cut short keeps what it measured
    print(table(rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
