"""Compare refinement settings on posed sets with ground truth, fast: the stages up to the hull run once per set,
then the refine stage runs once per variant and its mesh is scored against gt.ply (Chamfer-L1, F-score at
1 / 0.5 / 0.2 % of the GT diagonal, 1M area-uniform samples). No texture, no report: a tuning tool, not the
benchmark (``bench/run_bench.py`` runs whole jobs).

    python bench/tune_refine.py --sets DIR... --variant NAME:section.key=value,... [--variant ...]
                                --tag tune-B-h100 [--out bench/results] [--meshes FILE.npz]

``--variant base:`` (nothing after the colon) runs the defaults. ``--meshes`` stores every refined mesh
(float32 vertices, int32 faces) in one compressed npz, for looking at where the error is.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run_bench import card  # noqa: E402
from daemon.cli import _parse_sets  # noqa: E402
from daemon.config import load_settings  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """``NAME:section.key=value,section.key=value`` -> (NAME, nested overrides)."""
    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"variant {text!r}: give NAME:section.key=value,...")
    items = [x for x in rest.split(",") if x]
    return name, _parse_sets(items) if items else {}


def prepare(folder: Path, work: Path, device: str, stop: str = "refine", cli: dict[str, Any] | None = None):
    """Run the stages before ``stop`` once (default: ingest, cameras, masks, geometry); returns the context to rerun
    ``stop`` from. ``cli``: setting overrides, as ``--set`` gives them."""
    from pipeline.context import JobContext, JobLogAdapter
    from pipeline.runner import STAGES
    from pipeline.stages.base import commit_checkpoint, stage_dir

    settings = load_settings(None, environ={}, cli=cli or {})
    ctx = JobContext(job_id=folder.name, input_dir=folder, work_dir=work, settings=settings, device=device,
                     log=JobLogAdapter(logging.getLogger("hotmesh.tune"), {"job_id": folder.name}))
    for stage in STAGES:
        if stage.name == stop:
            break
        tmp = stage_dir(ctx, stage.name + ".tmp")
        tmp.mkdir(parents=True)
        summary = stage.run(ctx, tmp)
        commit_checkpoint(tmp, stage_dir(ctx, stage.name), "tune", summary)
    return ctx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", type=Path, required=True)
    ap.add_argument("--variant", action="append", required=True, metavar="NAME:section.key=value,...")
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--meshes", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import dataclasses

    import trimesh

    from pipeline.metrics import geometry_scores_multi
    from pipeline.metrics import mask_iou
    from pipeline.render import render
    from pipeline.stages.geometry import RefineStage, load_mesh
    from pipeline.stages.views import Views, load_masks

    variants = [parse_variant(v) for v in args.variant]
    rows: list[dict[str, Any]] = []
    meshes: dict[str, np.ndarray] = {}
    args.out.mkdir(parents=True, exist_ok=True)
    for folder in args.sets:
        work = Path(tempfile.mkdtemp(prefix=f"tune-{folder.name}-"))
        try:
            t0 = time.monotonic()
            ctx = prepare(folder, work, args.device)
            prep_s = time.monotonic() - t0
            gt = trimesh.load(folder / "gt.ply", force="mesh")
            hull = load_mesh(ctx, "geometry")
            views, masks = Views.load(ctx), load_masks(ctx)
            held = [i for i in np.nonzero(views.holdout)[0] if masks[i] is not None]
            for name, over in variants:
                base = load_settings(None, environ={}, cli=over)
                vctx = dataclasses.replace(ctx, settings=base)
                out_dir = work / f"refine-{name}"
                out_dir.mkdir()
                t1 = time.monotonic()
                summary = RefineStage().run(vctx, out_dir)
                secs = time.monotonic() - t1
                mesh = trimesh.load(out_dir / "mesh.ply", process=False, force="mesh")
                row: dict[str, Any] = {"set": folder.name, "variant": name, "overrides": over,
                                       "refine_seconds": round(secs, 2), "prepare_seconds": round(prep_s, 2),
                                       "faces": int(len(mesh.faces)), "watertight": bool(mesh.is_watertight),
                                       "genus": int(round(1 - mesh.euler_number / 2)),
                                       "hull_faces": int(len(hull.faces)), "refine": summary}
                for s in geometry_scores_multi(mesh, gt, args.samples, (0.01, 0.005, 0.002)):
                    row[f"fscore@{s.tau_rel * 100:g}%"] = round(s.fscore, 4)
                    row[f"precision@{s.tau_rel * 100:g}%"] = round(s.precision, 4)
                    row[f"recall@{s.tau_rel * 100:g}%"] = round(s.recall, 4)
                    row["chamfer_l1_rel"] = round(s.chamfer_l1_rel, 6)
                # silhouette agreement on the held-out views, as the report measures it (it bounds held-out PSNR)
                ious = [mask_iou(render(mesh, views.K[i], views.w2c[i], masks[i].shape[1], masks[i].shape[0]).mask,
                                 masks[i]) for i in held]
                row["heldout_iou"] = round(float(np.mean(ious)), 5) if ious else None
                rows.append(row)
                print(f"{folder.name:12s} {name:14s} F@0.2%={row['fscore@0.2%']:.4f} CD={row['chamfer_l1_rel']:.6f} "
                      f"P={row['precision@0.2%']:.4f} R={row['recall@0.2%']:.4f} faces={row['faces']} "
                      f"genus={row['genus']} IoU={row['heldout_iou']} refine={secs:.1f}s", flush=True)
                if args.meshes is not None:
                    meshes[f"{folder.name}__{name}__v"] = np.asarray(mesh.vertices, dtype=np.float32)
                    meshes[f"{folder.name}__{name}__f"] = np.asarray(mesh.faces, dtype=np.int32)
                # written after every run: a call stopped at its time limit still returns what it measured
                (args.out / f"{args.tag}.json").write_text(json.dumps(
                    {"benchmark": "refine-tuning", "card": card(), "device": args.device, "samples": args.samples,
                     "date": time.strftime("%Y-%m-%d"), "results": rows}, indent=1))
                if args.meshes is not None:
                    np.savez_compressed(args.meshes, **meshes)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
