#!/usr/bin/env bash
# Refinement variants on the session-4 defaults (isotropic remeshing, alpha coverage), scored against the GT:
# photometric weight, iterations, step size, smoothness. Results in $OUT.
#   bash bench/device_tune4.sh   (carry .carry/wheels .carry/pymeshlab-cp312.tar.xz .carry/data/spot_render
#                                  .carry/evalsets/{spot,bob,armadillo})
source bench/device_setup.sh
E=.carry/evalsets
python bench/tune_refine.py --sets .carry/data/spot_render $E/spot $E/bob $E/armadillo \
    --variant base: --variant photo2:refine.photometric_weight=2 --variant it350:refine.iterations=350 \
    --variant step2:refine.step=0.02 --variant lam10:refine.smoothness=10 \
    --tag tune-D-h200 --out "$OUT" 2>&1 | grep -v -i warn | grep -v coalesce | tee "$OUT/tune-D.log"
