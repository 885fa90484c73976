"""Compare texture-fit settings on posed sets, scored as the report scores them (held-out PSNR / SSIM of the
textured mesh, Embree ray casting): the stages up to the texture run once per set with the plain bake
(``texture.fit = false``), then each variant fits that bake and is scored on the held-out views.

    python bench/tune_texture.py --sets DIR... --variant NAME:texture.fit_prior=0.1,... [--variant ...]
                                 --tag tune-tex-h100 [--out bench/results]

``--variant bake:`` (nothing after the colon) scores the bake itself.
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
from bench.tune_refine import parse_variant, prepare  # noqa: E402
from daemon.config import load_settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", type=Path, required=True)
    ap.add_argument("--variant", action="append", required=True, metavar="NAME:section.key=value,...")
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import trimesh

    from pipeline.evaluate import held_out_scores
    from pipeline.stages.geometry import fit_bake, fit_settings, load_textured
    from pipeline.stages.views import Views, load_masks
    from pipeline.texture import Atlas, TextureSettings, rasterize_atlas

    variants = [parse_variant(v) for v in args.variant]
    rows: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for folder in args.sets:
        work = Path(tempfile.mkdtemp(prefix=f"tunetex-{folder.name}-"))
        try:
            t0 = time.monotonic()
            ctx = prepare(folder, work, args.device, stop="report", cli={"texture": {"fit": False}})
            prep_s = time.monotonic() - t0
            views, masks = Views.load(ctx), load_masks(ctx)
            mesh, uv, tex8 = load_textured(ctx)
            S = tex8.shape[0]
            face_id, bary = rasterize_atlas(uv, np.asarray(mesh.faces), S)
            atlas = Atlas(vertices=np.asarray(mesh.vertices), faces=np.asarray(mesh.faces), uv=uv,
                          face_of_texel=face_id, bary=bary)
            bake = tex8.astype(np.float32) / 255.0
            train = [i for i in views.train if masks[i] is not None]
            held = [i for i in np.nonzero(views.holdout)[0] if masks[i] is not None]
            for name, over in variants:
                cfg = load_settings(None, environ={}, cli=over).texture
                t1 = time.monotonic()
                info: dict[str, Any] = {}
                tex = bake
                fs = fit_settings(cfg, on_gpu=args.device == "cuda") if over else None
                if fs is not None:  # the texture stage's own fit, pixels and seam padding included
                    tex, info = fit_bake(ctx, atlas, bake, [views.rgb[i] for i in train], [masks[i] for i in train],
                                         views.K[train], views.w2c[train], TextureSettings(size=S), fs)
                secs = time.monotonic() - t1
                tex_u8 = (np.clip(tex, 0, 1) * 255).round().astype(np.uint8)
                h = held_out_scores(mesh, None, [views.names[i] for i in held], [views.rgb[i] for i in held],
                                    [masks[i] for i in held], views.K[held], views.w2c[held],
                                    textured=(mesh, uv, tex_u8))
                row = {"set": folder.name, "variant": name, "overrides": over, "psnr": round(h.mean_psnr, 3),
                       "ssim": round(h.mean_ssim, 4), "iou": round(h.mean_iou, 4), "fit_seconds": round(secs, 2),
                       "prepare_seconds": round(prep_s, 1), "textured_faces": int(len(mesh.faces)), "fit": info}
                rows.append(row)
                print(f"{folder.name:12s} {name:12s} PSNR={row['psnr']:.3f} SSIM={row['ssim']:.4f} "
                      f"fit={secs:.2f}s {info.get('rmse_before', '')}->{info.get('rmse_after', '')}", flush=True)
                (args.out / f"{args.tag}.json").write_text(json.dumps(
                    {"benchmark": "texture-fit-tuning", "card": card(), "device": args.device,
                     "date": time.strftime("%Y-%m-%d"), "results": rows}, indent=1))
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
