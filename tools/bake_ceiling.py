"""Held-out PSNR that the texture bake and the evaluation reach on perfect geometry: the set's GT mesh (isotropically
remeshed to about the refined meshes' size) is unwrapped, the training photos are baked into it exactly as the
texture stage does, and every 10th view is scored as the report scores it. The gap between this and a job's
held-out PSNR is what the geometry costs.

    python tools/bake_ceiling.py SET_DIR [--size 2048] [--faces 110000] [--power 4]

SET_DIR: a posed RGBA set with gt.ply (``bench/make_eval_sets.py``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.cameras import intrinsics_for_image, read_pose_source  # noqa: E402
from pipeline.evaluate import held_out_scores  # noqa: E402
from pipeline.images import load_rgba  # noqa: E402
from pipeline.meshing import isotropic_remesh  # noqa: E402
from pipeline.stages.views import holdout_flags  # noqa: E402
from pipeline.texture import TextureSettings, bake, build_atlas  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--faces", type=int, default=110_000)
    ap.add_argument("--power", type=float, default=4.0)
    args = ap.parse_args()
    src = read_pose_source(args.folder)
    if src is None:
        raise SystemExit(f"{args.folder}: no poses")
    gt = trimesh.load(args.folder / "gt.ply", force="mesh")
    remeshed = isotropic_remesh(np.asarray(gt.vertices), np.asarray(gt.faces), args.faces)
    mesh = trimesh.Trimesh(*remeshed, process=False) if remeshed is not None else gt
    imgs, masks, Ks, w2cs, names = [], [], [], [], []
    for fr in src.frames:
        rgb, alpha = load_rgba(args.folder / fr.name)  # as ingest decodes it
        if alpha is None:
            raise SystemExit(f"{fr.name}: no alpha channel; the ceiling needs an RGBA evaluation set")
        h, w = rgb.shape[:2]
        imgs.append(rgb)
        masks.append(alpha > 127)
        Ks.append(intrinsics_for_image(fr, w, h))
        w2cs.append(fr.w2c)
        names.append(fr.name)
    Ks_a, w2cs_a = np.array(Ks), np.array(w2cs)
    hold = holdout_flags(len(imgs), 10)  # the same views a job holds out by default (images.holdout_every)
    tr, ho = np.nonzero(~hold)[0], np.nonzero(hold)[0]
    s = TextureSettings(size=args.size, view_weight_power=args.power)
    atlas = build_atlas(mesh, s)
    tex, _ = bake(atlas, mesh, [imgs[i] for i in tr], [masks[i] for i in tr], Ks_a[tr], w2cs_a[tr], s)
    textured = (trimesh.Trimesh(atlas.vertices, atlas.faces, process=False), atlas.uv,
                (np.clip(tex, 0, 1) * 255).round().astype(np.uint8))
    r = held_out_scores(mesh, np.full((len(mesh.vertices), 3), 0.5), [names[i] for i in ho], [imgs[i] for i in ho],
                        [masks[i] for i in ho], Ks_a[ho], w2cs_a[ho], textured=textured)
    print(f"{args.folder.name}: held-out PSNR {r.mean_psnr:.2f} dB, IoU {r.mean_iou:.4f}, SSIM {r.mean_ssim:.4f} "
          f"(GT geometry, {len(mesh.faces)} faces, {args.size}^2 bake)")


if __name__ == "__main__":
    main()
