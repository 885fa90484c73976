#!/usr/bin/env bash
# Refinement variants (isotropic remeshing between levels vs midpoint subdivision) on five posed sets, scored
# against their GT; the refined meshes come back in one npz for error maps.
#   bash bench/device_tune3.sh   (carry .carry/wheels .carry/pymeshlab-cp312.tar.xz .carry/data/spot_render
#                                  .carry/evalsets/{spot,bob,armadillo,bunny})
source bench/device_setup.sh
python -c "import pymeshlab; print('pymeshlab', pymeshlab.__version__ if hasattr(pymeshlab, '__version__') else 'ok')"
E=.carry/evalsets
python bench/tune_refine.py --sets $E/bob .carry/data/spot_render $E/spot $E/armadillo $E/bunny \
    --variant base: --variant iso:refine.remesh=isotropic \
    --variant iso_it350:refine.remesh=isotropic,refine.iterations=350 \
    --variant iso_sil2:refine.remesh=isotropic,refine.silhouette_weight=2 \
    --tag tune-B-h100 --out "$OUT" --meshes "$OUT/tune-B-meshes.npz" 2>&1 | grep -v Warning | tee "$OUT/tune-B.log"
