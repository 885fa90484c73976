"""Trial of pipeline.photocarve on posed sets with GT: hull vs photo-carved hull, F-scores (300k samples).
    python tools/photocarve_trial.py SET RESOLUTION DEVICE THRESHOLD:MIN_THICKNESS ..."""
import sys, time, json, numpy as np, trimesh, logging, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pathlib import Path
from bench.tune_refine import prepare
from pipeline.stages.views import Views, load_masks
from pipeline.carve import carve, CarveSettings
from pipeline.meshing import marching_cubes, clean_mesh, MeshingSettings
from tools.photocarve import photo_carve, PhotoCarveSettings
from pipeline.metrics import geometry_scores_multi
folder = Path(sys.argv[1]); res = int(sys.argv[2]); dev = sys.argv[3]
variants = [PhotoCarveSettings(threshold=float(t), min_thickness=int(th)) for t, th in (x.split(':') for x in sys.argv[4:])]
work = Path(tempfile.mkdtemp())
ctx = prepare(folder, work, dev, stop="geometry")
views, masks = Views.load(ctx), load_masks(ctx)
idx = [i for i in views.train if masks[i] is not None]
imgs = [views.rgb[i] for i in idx]; ms = [masks[i] for i in idx]
t = time.time()
r = carve(views.K[idx], views.w2c[idx], ms, CarveSettings(resolution=res, outlier_views=0), device=dev)
print('hull', time.time() - t, r.field.shape)
gt = trimesh.load(folder / 'gt.ply', force='mesh')
def score(field, name, extra=''):
    m = clean_mesh(marching_cubes(field, r.origin, r.voxel), MeshingSettings(smoothing_iterations=10, max_faces=200000))
    sc = {f"F@{s.tau_rel*100:g}": round(s.fscore, 4) for s in geometry_scores_multi(m, gt, 300000, (0.01, 0.005, 0.002))}
    print(name, sc, extra, flush=True)
score(r.field, 'hull')
for v in variants:
    t = time.time()
    pc = photo_carve(r.field < 0, r.origin, r.voxel, imgs, ms, views.K[idx], views.w2c[idx], v, device=dev)
    f = np.where(pc.occupied, r.field, np.maximum(r.field, 0.5 * r.voxel)).astype(np.float32)
    score(f, f'pc t={v.threshold} th={v.min_thickness}', f'carved={pc.carved} of {(r.field<0).sum()} passes={pc.passes} {time.time()-t:.1f}s')
